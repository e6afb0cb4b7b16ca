//! Which fields of a JSON document stay out of the key.

use std::{collections::BTreeMap, sync::Arc};

/// Dotted paths of JSON object fields to leave out of the key, such as
/// `user` or `metadata.request_id`. Arrays are transparent: `messages.name`
/// drops `name` from every element of `messages`.
#[derive(Clone, Debug, Default)]
pub(crate) struct IgnoreFields(Option<Arc<Node>>);

#[derive(Debug, Default)]
pub(super) struct Node {
    /// `None`: this field is ignored whole; `Some`: only some of its children.
    pub(super) children: BTreeMap<String, Option<Node>>,
}

impl IgnoreFields {
    pub(crate) fn new<I, S>(paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut root = Node::default();
        for path in paths {
            let segments: Vec<&str> = path.as_ref().split('.').collect();
            if segments.iter().any(|s| s.is_empty()) {
                continue;
            }
            root.insert(&segments);
        }
        if root.children.is_empty() {
            Self(None)
        } else {
            Self(Some(Arc::new(root)))
        }
    }

    /// The dotted paths left out, sorted.
    pub(crate) fn paths(&self) -> Vec<String> {
        fn walk(node: &Node, prefix: &str, out: &mut Vec<String>) {
            for (name, child) in &node.children {
                let path = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                match child {
                    None => out.push(path),
                    Some(child) => walk(child, &path, out),
                }
            }
        }
        let mut out = Vec::new();
        if let Some(root) = self.root() {
            walk(root, "", &mut out);
        }
        out
    }

    pub(super) fn root(&self) -> Option<&Node> {
        self.0.as_deref()
    }
}

impl Node {
    fn insert(&mut self, segments: &[&str]) {
        let Some((first, rest)) = segments.split_first() else {
            return;
        };
        if rest.is_empty() {
            // The whole field is ignored, whatever was said of its children.
            self.children.insert((*first).to_owned(), None);
            return;
        }
        // A field already ignored whole stays so.
        if let Some(child) = self
            .children
            .entry((*first).to_owned())
            .or_insert_with(|| Some(Node::default()))
        {
            child.insert(rest);
        }
    }
}
