//! What a document may ask for, priced before any of it is validated or run. async-graphql's own
//! checks (recursion depth right after parsing, then depth and complexity) walk the document
//! with every fragment spread expanded, spread by spread, so a kilobyte of fragments that each
//! spread the next twice costs seconds (and each further fragment doubles that) before they can
//! refuse it. Here the document is parsed once, as the request is prepared, and each fragment
//! sized once, so it is priced in time proportional to its length; one whose expanded size is
//! over [`MAX_EXPANDED_FIELDS`], or that uses more than [`MAX_ALIASES`] aliases, is refused at
//! once, and any other reaches those checks with a bounded walk ahead of them.
//!
//! Before that, the text's brackets are counted: the parser descends once per nested list or
//! object value, with no bound of its own, so 64 KiB of `[` would overflow its stack. A
//! document nested deeper than [`MAX_NESTING`] is refused unparsed.
//!
//! Lists are priced by their real size in complexity: a connection by its `first` (at least 1)
//! plus its statement (see [`STATEMENT`]), a killmail's attackers and items by what a killmail
//! holds on average (see [`ATTACKERS`]).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest,
};
use async_graphql::parser::types::{
    ExecutableDocument, FragmentDefinition, Selection, SelectionSet,
};
use async_graphql::{Name, Positioned, Request, ServerError, ServerResult};

/// Most fields a document may select once its fragments are expanded (aliases count each):
/// a killboard page asks for a few hundred.
pub const MAX_EXPANDED_FIELDS: usize = 5_000;
/// Most aliased fields a document may hold once its fragments are expanded: a page that shows
/// several lists side by side names a few dozen.
pub const MAX_ALIASES: usize = 50;
/// Deepest nesting of brackets (`{`, `[`, `(`) in a document's text: selections nest at most
/// `MAX_DEPTH` deep, and a filter is an object of lists.
pub const MAX_NESTING: usize = 32;

/// What a killmail's `attackers` list is priced as in complexity: the mean number of attackers
/// over a day of zKillboard's killmails (2021-12-03: 12.3; the largest had 137).
pub const ATTACKERS: usize = 12;
/// What a victim's `items` list is priced as: the mean over the same day (27.1; at most 514).
pub const ITEMS: usize = 27;
/// What a container's `items` list is priced as: most items are no containers.
pub const CONTAINER_ITEMS: usize = 4;

/// What running one statement is priced as, beside the fields it answers: a connection under
/// a list (each attacker's `killmails`) runs one per entry.
pub const STATEMENT: usize = 10;

/// The complexity of a connection of `first` nodes (at least 1: `first: 0` still runs its
/// statement), each costing `each`, and of the statement that reads them.
pub fn page(first: Option<i32>, each: usize) -> usize {
    usize::try_from(first.unwrap_or(25))
        .unwrap_or(0)
        .max(1)
        .saturating_mul(each)
        .saturating_add(STATEMENT)
}

/// The complexity of a list priced as `length` entries, each costing `each`.
pub fn list(length: usize, each: usize) -> usize {
    length.saturating_mul(each)
}

/// The extension that prices documents as requests are prepared.
pub struct DocumentSize;

impl ExtensionFactory for DocumentSize {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(DocumentSizeExtension)
    }
}

struct DocumentSizeExtension;

#[async_graphql::async_trait::async_trait]
impl Extension for DocumentSizeExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        parse(&mut request)?;
        next.run(ctx, request).await
    }
}

/// Parses `request`'s document (kept in it: async-graphql does not parse it again) unless it
/// is nested too deep to parse safely, and prices it; refusals carry their reason and an
/// `extensions.code` of `QUERY_TOO_LARGE` or `QUERY_TOO_DEEP`.
pub fn parse(request: &mut Request) -> ServerResult<&ExecutableDocument> {
    if nesting(&request.query, MAX_NESTING).is_none() {
        return Err(refusal(
            format!("the document nests brackets more than {MAX_NESTING} deep"),
            "QUERY_TOO_DEEP",
        ));
    }
    let document = request.parsed_query()?;
    match expanded_size(document, MAX_EXPANDED_FIELDS) {
        None => Err(refusal(
            format!(
                "the document selects more than {MAX_EXPANDED_FIELDS} fields once its fragments are expanded"
            ),
            "QUERY_TOO_LARGE",
        )),
        Some(size) if size.aliases > MAX_ALIASES => Err(refusal(
            format!(
                "the document uses {} aliases once its fragments are expanded; at most {MAX_ALIASES}",
                size.aliases
            ),
            "QUERY_TOO_LARGE",
        )),
        Some(_) => Ok(document),
    }
}

fn refusal(message: String, code: &str) -> ServerError {
    let mut error = ServerError::new(message, None);
    let mut extensions = async_graphql::ErrorExtensionValues::default();
    extensions.set("code", code);
    error.extensions = Some(extensions);
    error
}

/// The deepest nesting of brackets in a document's text, outside strings and comments, or
/// `None` once it is over `limit` (the rest is not read). Unbalanced brackets are the
/// parser's to report.
pub fn nesting(text: &str, limit: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut deepest, mut at) = (0usize, 0usize, 0usize);
    while at < bytes.len() {
        match bytes[at] {
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
                if depth > limit {
                    return None;
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            b'#' => {
                while at < bytes.len() && bytes[at] != b'\n' {
                    at += 1;
                }
            }
            b'"' if bytes[at..].starts_with(b"\"\"\"") => {
                // A block string ends at the next unescaped `"""`.
                at += 3;
                while at < bytes.len() && !bytes[at..].starts_with(b"\"\"\"") {
                    at += if bytes[at..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                at += 2;
            }
            b'"' => {
                at += 1;
                while at < bytes.len() && bytes[at] != b'"' && bytes[at] != b'\n' {
                    at += if bytes[at] == b'\\' { 2 } else { 1 };
                }
            }
            _ => {}
        }
        at += 1;
    }
    Some(deepest)
}

/// What a document selects once its fragments are expanded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Size {
    pub fields: usize,
    /// Fields selected under an alias.
    pub aliases: usize,
}

impl Size {
    fn add(self, other: Size) -> Size {
        Size {
            fields: self.fields.saturating_add(other.fields),
            aliases: self.aliases.saturating_add(other.aliases),
        }
    }
}

/// How many fields the document's operations select with every fragment expanded, and how
/// many of them under an alias, or `None` when the fields are over `limit`. A fragment spread
/// within itself (which validation refuses) counts as nothing here.
pub fn expanded_size(document: &ExecutableDocument, limit: usize) -> Option<Size> {
    let mut sizes = Sizes {
        fragments: &document.fragments,
        known: HashMap::new(),
        limit,
    };
    let mut total = Size::default();
    for (_, operation) in document.operations.iter() {
        total = total.add(sizes.of(&operation.node.selection_set.node)?);
        if total.fields > limit {
            return None;
        }
    }
    Some(total)
}

struct Sizes<'a> {
    fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
    /// Each fragment's expanded size once known; `None` while it is being sized.
    known: HashMap<&'a str, Option<Size>>,
    limit: usize,
}

impl<'a> Sizes<'a> {
    fn of(&mut self, set: &'a SelectionSet) -> Option<Size> {
        let mut size = Size::default();
        for selection in &set.items {
            let more = match &selection.node {
                Selection::Field(field) => {
                    let own = Size {
                        fields: 1,
                        aliases: usize::from(field.node.alias.is_some()),
                    };
                    own.add(self.of(&field.node.selection_set.node)?)
                }
                Selection::InlineFragment(inline) => self.of(&inline.node.selection_set.node)?,
                Selection::FragmentSpread(spread) => {
                    self.fragment(spread.node.fragment_name.node.as_str())?
                }
            };
            size = size.add(more);
            if size.fields > self.limit {
                return None;
            }
        }
        Some(size)
    }

    fn fragment(&mut self, name: &'a str) -> Option<Size> {
        match self.known.get(name) {
            Some(Some(size)) => return Some(*size),
            // Spread within itself: refused by validation, which stops at the cycle.
            Some(None) => return Some(Size::default()),
            None => {}
        }
        let Some((key, definition)) = self.fragments.get_key_value(name) else {
            // Unknown fragment: validation says so.
            return Some(Size::default());
        };
        self.known.insert(key.as_str(), None);
        let size = self.of(&definition.node.selection_set.node)?;
        self.known.insert(key.as_str(), Some(size));
        Some(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` fragments, each spreading the next twice: 2^n fields once expanded, in about 60 n
    /// bytes.
    fn doubling(n: usize) -> String {
        let mut query = String::from("query { killmail(id: 1) { ...F0 } }\n");
        for i in 0..n {
            query.push_str(&format!(
                "fragment F{i} on Killmail {{ ...F{next} ...F{next} }}\n",
                next = i + 1
            ));
        }
        query.push_str(&format!("fragment F{n} on Killmail {{ id }}\n"));
        query
    }

    fn size(query: &str) -> Option<usize> {
        let document = async_graphql::parser::parse_query(query).expect("parses");
        expanded_size(&document, MAX_EXPANDED_FIELDS).map(|size| size.fields)
    }

    fn refusal_code(query: &str) -> Option<String> {
        let mut request = Request::new(query);
        let error = parse(&mut request).err()?;
        let code = error.extensions?.get("code")?.clone();
        Some(code.to_string())
    }

    #[test]
    fn fields_are_counted_with_fragments_expanded() {
        assert_eq!(size("{ killmail(id: 1) { id hash } }"), Some(3));
        assert_eq!(size(&doubling(3)), Some(1 + 8));
        assert_eq!(
            size(
                "{ a: killmail(id: 1) { ...K } b: killmail(id: 2) { ...K } } fragment K on Killmail { id ... on Killmail { hash } }"
            ),
            Some(6)
        );
    }

    #[test]
    fn a_doubling_document_is_refused_at_once() {
        let started = std::time::Instant::now();
        assert_eq!(size(&doubling(60)), None);
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
    }

    #[test]
    fn a_fragment_spread_within_itself_ends() {
        assert_eq!(
            size(
                "{ killmail(id: 1) { ...A } } fragment A on Killmail { id ...B } fragment B on Killmail { ...A }"
            ),
            Some(2)
        );
    }

    #[test]
    fn aliases_are_counted_through_fragments() {
        let aliased: String = (0..30).map(|i| format!("a{i}: id ")).collect();
        let twice = format!(
            "{{ x: killmail(id: 1) {{ ...K }} y: killmail(id: 2) {{ ...K }} }} fragment K on Killmail {{ {aliased} }}"
        );
        let document = async_graphql::parser::parse_query(&twice).expect("parses");
        let size = expanded_size(&document, MAX_EXPANDED_FIELDS).expect("small");
        assert_eq!(size.aliases, 2 + 60);
        assert_eq!(refusal_code(&twice).as_deref(), Some("\"QUERY_TOO_LARGE\""));
        let once = format!("{{ killmail(id: 1) {{ {aliased} }} }}");
        assert_eq!(refusal_code(&once), None);
    }

    #[test]
    fn brackets_are_counted_outside_strings_and_comments() {
        assert_eq!(nesting("{ a(f: {b: [1, [2]]}) { c } }", 99), Some(5));
        assert_eq!(nesting(r#"{ a(s: "[[[\"[[") } # [[[[["#, 99), Some(2));
        assert_eq!(nesting("{ a(s: \"\"\"[[ \\\"\"\" [[\"\"\") }", 99), Some(2));
        assert_eq!(nesting(&"[".repeat(40), 32), None);
    }

    #[test]
    fn a_deeply_nested_value_is_refused_before_it_is_parsed() {
        // 64 KiB of `[` overflowed the parser's stack.
        let deep = format!(
            "{{ killmails(filter: {{characterIds: {}",
            "[".repeat(64 * 1024)
        );
        let started = std::time::Instant::now();
        assert_eq!(refusal_code(&deep).as_deref(), Some("\"QUERY_TOO_DEEP\""));
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
    }

    #[test]
    fn lists_are_priced_by_their_size_and_first_at_least_one() {
        assert_eq!(page(Some(0), 7), 7 + STATEMENT);
        assert_eq!(page(Some(-3), 7), 7 + STATEMENT);
        assert_eq!(page(None, 2), 50 + STATEMENT);
        assert_eq!(page(Some(200), usize::MAX), usize::MAX);
        assert_eq!(list(ATTACKERS, 3), 36);
    }
}
