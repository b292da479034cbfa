//! What a document may ask for, priced before any of it is validated or run. async-graphql's own
//! checks (recursion depth right after parsing, then depth and complexity) walk the document
//! with every fragment spread expanded, spread by spread, so a kilobyte of fragments that each
//! spread the next twice costs seconds (and each further fragment doubles that) before they can
//! refuse it. Here the document is parsed once, as the request is prepared, and each fragment
//! sized once, so it is priced in time proportional to its length; one whose expanded size is
//! over [`MAX_EXPANDED_FIELDS`] is refused at once, and any other reaches those checks with a
//! bounded walk ahead of them.

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
        // Parsed here, and kept: async-graphql does not parse it again.
        let document = request.parsed_query()?;
        match expanded_fields(document, MAX_EXPANDED_FIELDS) {
            Some(_) => next.run(ctx, request).await,
            None => {
                let mut error = ServerError::new(
                    format!(
                        "the document selects more than {MAX_EXPANDED_FIELDS} fields once its fragments are expanded"
                    ),
                    None,
                );
                let mut extensions = async_graphql::ErrorExtensionValues::default();
                extensions.set("code", "QUERY_TOO_LARGE");
                error.extensions = Some(extensions);
                Err(error)
            }
        }
    }
}

/// How many fields the document's operations select with every fragment expanded, or `None`
/// when that is over `limit`. A fragment spread within itself (which validation refuses)
/// counts as nothing here.
pub fn expanded_fields(document: &ExecutableDocument, limit: usize) -> Option<usize> {
    let mut sizes = Sizes {
        fragments: &document.fragments,
        known: HashMap::new(),
        limit,
    };
    let mut total = 0usize;
    for (_, operation) in document.operations.iter() {
        total = total.saturating_add(sizes.of(&operation.node.selection_set.node)?);
        if total > limit {
            return None;
        }
    }
    Some(total)
}

struct Sizes<'a> {
    fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
    /// Each fragment's expanded size once known; `None` while it is being sized.
    known: HashMap<&'a str, Option<usize>>,
    limit: usize,
}

impl<'a> Sizes<'a> {
    fn of(&mut self, set: &'a SelectionSet) -> Option<usize> {
        let mut size = 0usize;
        for selection in &set.items {
            let more = match &selection.node {
                Selection::Field(field) => {
                    1usize.saturating_add(self.of(&field.node.selection_set.node)?)
                }
                Selection::InlineFragment(inline) => self.of(&inline.node.selection_set.node)?,
                Selection::FragmentSpread(spread) => {
                    self.fragment(spread.node.fragment_name.node.as_str())?
                }
            };
            size = size.saturating_add(more);
            if size > self.limit {
                return None;
            }
        }
        Some(size)
    }

    fn fragment(&mut self, name: &'a str) -> Option<usize> {
        match self.known.get(name) {
            Some(Some(size)) => return Some(*size),
            // Spread within itself: refused by validation, which stops at the cycle.
            Some(None) => return Some(0),
            None => {}
        }
        let Some((key, definition)) = self.fragments.get_key_value(name) else {
            // Unknown fragment: validation says so.
            return Some(0);
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
        expanded_fields(&document, MAX_EXPANDED_FIELDS)
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
}
