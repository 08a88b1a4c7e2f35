//! A minimal XML writer for the payload builders, and (for tests) a well-formedness check
//! standing in for an XML parser, which this module may not depend on.

/// A minimal indenting XML writer that escapes text and attribute values.
pub(crate) struct XmlWriter {
    /// The document so far.
    out: String,
    /// Open elements.
    depth: usize,
    /// Quote character around attribute values.
    pub(crate) quote: char,
}

impl XmlWriter {
    /// An empty document quoting attributes with `quote`.
    pub(crate) fn new(quote: char) -> XmlWriter {
        XmlWriter {
            out: String::new(),
            depth: 0,
            quote,
        }
    }

    /// Appends a line as is.
    pub(crate) fn raw(&mut self, line: &str) {
        self.out.push_str(line);
        self.out.push('\n');
    }

    /// `<name attrs` at the current indentation.
    fn start(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.out.push_str(&"    ".repeat(self.depth));
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attrs {
            let q = self.quote;
            self.out.push_str(&format!(" {key}={q}{}{q}", escape(value)));
        }
    }

    /// `<name attrs>`, then indents.
    pub(crate) fn open(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.start(name, attrs);
        self.out.push_str(">\n");
        self.depth += 1;
    }

    /// `</name>`, after unindenting.
    pub(crate) fn close(&mut self, name: &str) {
        self.depth = self.depth.saturating_sub(1);
        self.out.push_str(&"    ".repeat(self.depth));
        self.out.push_str(&format!("</{name}>\n"));
    }

    /// `<name attrs/>`.
    pub(crate) fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.start(name, attrs);
        self.out.push_str("/>\n");
    }

    /// `<name attrs>text</name>`.
    pub(crate) fn text(&mut self, name: &str, attrs: &[(&str, &str)], text: &str) {
        self.start(name, attrs);
        self.out.push_str(&format!(">{}</{name}>\n", escape(text)));
    }

    /// The document.
    pub(crate) fn finish(self) -> String {
        self.out
    }
}

/// Escapes `&`, `<`, `>` and both quotes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Test helpers.
#[cfg(test)]
mod check {
    /// A small well-formedness check standing in for an XML parser: balanced tags,
    /// quoted attributes, a single root. Returns the element names in document order.
    pub(crate) fn elements(xml: &str) -> Vec<String> {
        let mut stack: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut roots = 0;
        let mut rest = xml.trim();
        if let Some(after) = rest.strip_prefix("<?xml") {
            rest = &after[after.find("?>").expect("unterminated declaration") + 2..];
        }
        while let Some(lt) = rest.find('<') {
            let text = &rest[..lt];
            check_text(text);
            if stack.is_empty() {
                assert!(text.trim().is_empty(), "text outside the root: {text:?}");
            }
            rest = &rest[lt + 1..];
            let gt = tag_end(rest);
            let tag = &rest[..gt];
            rest = &rest[gt + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name.trim()), "mismatched </{name}>");
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body.split_whitespace().next().expect("empty tag").to_string();
            check_attributes(&body[name.len()..]);
            if stack.is_empty() {
                roots += 1;
            }
            names.push(name.clone());
            if !self_closing {
                stack.push(name);
            }
        }
        assert!(rest.trim().is_empty(), "trailing text {rest:?}");
        assert!(stack.is_empty(), "unclosed {stack:?}");
        assert_eq!(roots, 1, "exactly one root element");
        names
    }

    /// Character data: no `>`, and every `&` starts a predefined entity.
    fn check_text(text: &str) {
        assert!(!text.contains('>'), "'>' in text {text:?}");
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..];
            let known = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"];
            assert!(known.iter().any(|k| entity.starts_with(k)), "bare '&' in {text:?}");
        }
    }

    /// Index of the `>` closing a tag, skipping quoted values.
    fn tag_end(s: &str) -> usize {
        let mut quote = None;
        for (i, c) in s.char_indices() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '>') => return i,
                (None, '<') => panic!("'<' inside a tag"),
                _ => {}
            }
        }
        panic!("unterminated tag");
    }

    /// Every attribute is `name=` followed by a quoted value without `<`.
    fn check_attributes(mut s: &str) {
        loop {
            s = s.trim_start();
            if s.is_empty() {
                return;
            }
            let eq = s.find('=').expect("attribute without value");
            assert!(!s[..eq].contains(char::is_whitespace), "bad attribute name in {s:?}");
            let q = s[eq + 1..].chars().next().expect("missing value");
            assert!(q == '"' || q == '\'', "unquoted value in {s:?}");
            let value_start = eq + 2;
            let len = s[value_start..].find(q).expect("unterminated value");
            let value = &s[value_start..value_start + len];
            assert!(!value.contains('<'), "'<' in value {value:?}");
            check_text(value);
            s = &s[value_start + len + 1..];
        }
    }
}

#[cfg(test)]
pub(crate) use check::elements;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_escapes_and_nests() {
        let mut x = XmlWriter::new('\'');
        x.open("a", &[("k", "it's <x> & \"y\"")]);
        x.text("b", &[], "1 < 2 & 3 > 2");
        x.empty("c", &[]);
        x.close("a");
        let doc = x.finish();
        assert_eq!(
            doc,
            "<a k='it&apos;s &lt;x&gt; &amp; &quot;y&quot;'>\n    \
             <b>1 &lt; 2 &amp; 3 &gt; 2</b>\n    <c/>\n</a>\n"
        );
        assert_eq!(elements(&doc), ["a", "b", "c"]);
    }

    #[test]
    #[should_panic(expected = "mismatched")]
    fn check_rejects_unbalanced_tags() {
        elements("<a><b></a></b>");
    }
}
