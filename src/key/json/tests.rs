use super::{
    canonicalize,
    prescan::{prescan, Member, Table},
    reference::canonical_escapes,
    IgnoreFields, MAX_DEPTH, MAX_NESTING,
};

fn canon(input: &str) -> String {
    canon_ignoring(input, &[])
}

fn canon_ignoring(input: &str, ignore: &[&str]) -> String {
    let mut out = Vec::new();
    canonicalize(input.as_bytes(), &IgnoreFields::new(ignore), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn sorts_keys_and_drops_white_space() {
    assert_eq!(
        canon(r#" { "b" : [ 1 , { "d":null, "c":true } ], "a" : "x" } "#),
        r#"{"a":"x","b":[1,{"c":true,"d":null}]}"#
    );
}

#[test]
fn keeps_numbers_verbatim() {
    assert_eq!(
        canon("[1, 1.0, 1e0, -0, 123456789012345678901234567890]"),
        "[1,1.0,1e0,-0,123456789012345678901234567890]"
    );
}

#[test]
fn normalises_string_escapes() {
    assert_eq!(canon(r#"{"\u0061":"\u0041\/\n"}"#), r#"{"a":"A/\n"}"#);
    assert_eq!(canon(r#""é""#), canon(r#""\u00e9""#));
}

#[test]
fn duplicate_names_are_refused_at_any_depth_however_spelt() {
    let refused = |input: &str, ignore: &[&str]| {
        let mut out = Vec::new();
        canonicalize(input.as_bytes(), &IgnoreFields::new(ignore), &mut out).is_err()
    };
    for input in [
        r#"{"a":1,"a":2}"#,
        r#"{"a":2,"a":2}"#,
        r#"{"a":1,"b":0,"\u0061":2}"#,
        r#"{"x":{"a":1,"a":2}}"#,
        r#"[0,{"m":[{"a":1,"b":2,"a":3}]}]"#,
        r#"{"\ud83d\ude00":1,"😀":2}"#,
        r#"{"user":1,"user":2}"#,
    ] {
        assert!(refused(input, &[]), "{input}");
    }
    // An ignored name seen twice is still two members of a written object.
    assert!(refused(r#"{"user":1,"user":2,"q":1}"#, &["user"]));
    // Inside an ignored field, which is not in the key, names are not
    // compared.
    assert_eq!(
        canon_ignoring(r#"{"meta":{"a":1,"a":2},"q":1}"#, &["meta"]),
        r#"{"q":1}"#
    );
    // Names that differ only by case or by escapes of other characters
    // are different names.
    assert_eq!(canon(r#"{"a":1,"A":2}"#), r#"{"A":2,"a":1}"#);
    assert_eq!(canon(r#"{"a\/b":1,"a/c":2}"#), r#"{"a/b":1,"a/c":2}"#);
}

#[test]
fn rejects_what_is_not_one_document() {
    let mut out = Vec::new();
    for bad in ["", "{", "{} {}", "[1,]", "nul", "\"\\x\""] {
        assert!(
            canonicalize(bad.as_bytes(), &IgnoreFields::default(), &mut out).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn ignores_fields_by_path_through_arrays() {
    assert_eq!(
        canon_ignoring(
            r#"{"user":"u","metadata":{"request_id":1,"keep":2},"messages":[{"name":"n","content":"c"}]}"#,
            &["user", "metadata.request_id", "messages.name"]
        ),
        r#"{"messages":[{"content":"c"}],"metadata":{"keep":2}}"#
    );
    // A whole-field rule wins over a deeper one.
    assert_eq!(
        canon_ignoring(r#"{"a":{"b":1},"c":1}"#, &["a.b", "a"]),
        r#"{"c":1}"#
    );
    // Empty segments are not paths.
    assert_eq!(canon_ignoring(r#"{"a":1}"#, &["", "a."]), r#"{"a":1}"#);
}

#[test]
fn canonical_escapes_are_copied_and_others_rewritten() {
    assert_eq!(canon(r#""a\nb\"c\\d\u001f""#), r#""a\nb\"c\\d\u001f""#);
    assert_eq!(canon(r#""\u000a""#), r#""\n""#);
    assert_eq!(canon(r#""\u001F""#), r#""\u001f""#);
    assert_eq!(canon(r#""\/""#), r#""/""#);
    assert_eq!(canon(r#""\u00e9""#), "\"é\"");
    for literal in [r#""\n""#, r#""\u0001""#, r#""x\\""#] {
        assert!(canonical_escapes(literal), "{literal}");
    }
    for literal in [r#""\/""#, r#""\u000a""#, r#""\u00E9""#, r#""\u0041""#] {
        assert!(!canonical_escapes(literal), "{literal}");
    }
}

#[test]
fn root_whitespace_and_trailing_garbage() {
    assert_eq!(canon(" \n { \"b\":1 , \"a\":[ ] } \n"), r#"{"a":[],"b":1}"#);
    assert_eq!(canon(" 42 "), "42");
    let mut out = Vec::new();
    assert!(canonicalize(b"{} x", &IgnoreFields::default(), &mut out).is_err());
    assert!(canonicalize(b"[1] [2]", &IgnoreFields::default(), &mut out).is_err());
    assert!(canonicalize(b"\xff", &IgnoreFields::default(), &mut out).is_err());
}

/// Writes `value` as a JSON string literal, escaping each character in
/// one of the ways JSON allows, chosen by `choices`.
fn escaped_anyhow(value: &str, choices: &[u8]) -> String {
    let mut out = String::from("\"");
    for (i, c) in value.chars().enumerate() {
        let choice = choices.get(i % choices.len().max(1)).copied().unwrap_or(0) % 3;
        match c {
            '"' => out.push_str(if choice == 0 { "\\\"" } else { "\\u0022" }),
            '\\' => out.push_str(if choice == 0 { "\\\\" } else { "\\u005C" }),
            '/' if choice == 1 => out.push_str("\\/"),
            c if (c as u32) < 0x20 || choice == 2 => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

proptest::proptest! {
    #[test]
    fn any_spelling_of_a_string_canonicalises_to_what_serde_json_writes(
        value in "\\PC*|[\\x00-\\x1f\"\\\\/ aé😀]*",
        choices in proptest::collection::vec(proptest::num::u8::ANY, 1..8),
    ) {
        let canonical = serde_json::to_string(&value).unwrap();
        proptest::prop_assert_eq!(canon(&escaped_anyhow(&value, &choices)), canonical.clone());
        proptest::prop_assert_eq!(canon(&canonical), canonical);
    }
}

#[test]
fn deep_nesting_is_refused_not_followed() {
    let mut out = Vec::new();
    let at_limit = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert!(canonicalize(at_limit.as_bytes(), &IgnoreFields::default(), &mut out).is_ok());
    // Deep enough to exhaust any thread's stack if the walk followed it.
    let hostile = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(canonicalize(hostile.as_bytes(), &IgnoreFields::default(), &mut out).is_err());
    let objects = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    assert!(canonicalize(objects.as_bytes(), &IgnoreFields::default(), &mut out).is_err());
}

#[test]
fn the_cost_of_the_walk_is_linear_in_the_body_size() {
    let mut out = Vec::new();
    let payload = format!("\"{}\"", "x".repeat(1 << 20));
    let nest = |depth: usize| format!("{}{payload}{}", "[".repeat(depth), "]".repeat(depth));
    // One scan and one walk, whatever the nesting (the former walk, which
    // re-parsed each level, refused the second as too costly).
    for depth in [5, 100] {
        out.clear();
        let document = nest(depth);
        assert!(canonicalize(document.as_bytes(), &IgnoreFields::default(), &mut out).is_ok());
        assert_eq!(out, document.as_bytes());
    }
}

#[test]
fn the_depth_limit_is_the_former_one() {
    for depth in MAX_DEPTH - 2..=MAX_DEPTH + 2 {
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let mixed = format!(
            "{}0{}",
            r#"[{"a":"#.repeat(depth / 2),
            "}]".repeat(depth / 2)
        );
        // (document, how many containers nest in it)
        for (document, nesting) in [(arrays, depth), (mixed, depth / 2 * 2)] {
            let mut new = Vec::new();
            let mut old = Vec::new();
            let new =
                canonicalize(document.as_bytes(), &IgnoreFields::default(), &mut new).map(|()| new);
            let old = super::reference::canonicalize(
                document.as_bytes(),
                &IgnoreFields::default(),
                &mut old,
            )
            .map(|()| old);
            assert_eq!(new.is_ok(), nesting <= MAX_DEPTH, "{nesting}");
            assert_eq!(new.ok(), old.ok(), "{depth}");
        }
    }
}

#[test]
fn deep_nesting_inside_an_ignored_field_is_validated_not_walked() {
    // As before: the depth limit bounds the walk, which skips ignored
    // fields; their contents are only checked for syntax.
    let deep = format!(r#"{{"a":{}1{},"b":1}}"#, "[".repeat(1000), "]".repeat(1000));
    assert_eq!(canon_ignoring(&deep, &["a"]), r#"{"b":1}"#);
    let mut out = Vec::new();
    assert!(canonicalize(deep.as_bytes(), &IgnoreFields::default(), &mut out).is_err());
    let broken = format!(r#"{{"a":{}1{}}}"#, "[".repeat(1000), "]".repeat(999));
    assert!(canonicalize(broken.as_bytes(), &IgnoreFields::new(["a"]), &mut out).is_err());
}

#[test]
fn lone_surrogates_fail_where_serde_json_decodes_them() {
    let ok = |input: &str, ignore: &[&str]| {
        let mut out = Vec::new();
        canonicalize(input.as_bytes(), &IgnoreFields::new(ignore), &mut out)
            .ok()
            .map(|()| String::from_utf8(out).unwrap())
    };
    assert_eq!(ok(r#""\ud800""#, &[]), None);
    assert_eq!(ok(r#""\udc00""#, &[]), None);
    assert_eq!(ok(r#""\ud800\u0041""#, &[]), None);
    assert_eq!(ok(r#""\ud800\n""#, &[]), None);
    assert_eq!(ok(r#""\ud800""#, &[]), None);
    assert_eq!(ok(r#""\ud83d\ude00""#, &[]).as_deref(), Some("\"😀\""));
    assert_eq!(ok(r#""\uD83D\uDE00""#, &[]).as_deref(), Some("\"😀\""));
    // Every key of a written object is decoded, even an ignored one…
    assert_eq!(ok(r#"{"\ud800":1}"#, &[]), None);
    // …but values are decoded only when written.
    assert_eq!(ok(r#"{"a":"\ud800"}"#, &["a"]).as_deref(), Some("{}"));
    assert_eq!(ok(r#"{"a":"\ud800","a":1}"#, &[]), None);
    assert_eq!(ok(r#"{"a":{"\udc00":1}}"#, &["a"]).as_deref(), Some("{}"));
    assert_eq!(ok(r#"{"a":"\ud800"}"#, &[]), None);
}

#[test]
fn the_first_pass_notes_objects_of_two_or_more_members_only() {
    let zeros = format!("[{}0]", "0,".repeat(100_000));
    let notes = prescan(zeros.as_bytes()).unwrap();
    assert_eq!((notes.members.capacity(), notes.tables.capacity()), (0, 0));
    let lone = r#"[{"a":1},{"b":[{"c":{"d":"x"}}]},{}]"#;
    let notes = prescan(lone.as_bytes()).unwrap();
    assert_eq!((notes.members.len(), notes.tables.len()), (0, 0));
    assert_eq!(canon(lone), lone);
    let members: String = (0..100_000)
        .rev()
        .map(|i| format!("\"a{i:x}\":0,"))
        .collect();
    let dense = format!("{{{members}\"z\":0}}");
    let notes = prescan(dense.as_bytes()).unwrap();
    assert_eq!((notes.members.len(), notes.tables.len()), (100_001, 1));
    let bytes = notes.members.len() * std::mem::size_of::<Member>()
        + notes.tables.len() * std::mem::size_of::<Table>();
    assert!(
        bytes <= dense.len(),
        "{bytes} bytes of notes for {}",
        dense.len()
    );
    // Nested objects noted before the larger root: still in place.
    let nested = format!(r#"{{"n":{{"x":1,"y":2}},{members}"z":0}}"#);
    let canonical = canon(&nested);
    assert!(
        canonical.starts_with(r#"{"a0":0,"a1":0,"#),
        "{}",
        &canonical[..40]
    );
    assert!(canonical.contains(r#""n":{"x":1,"y":2},"z":0}"#));
}

#[test]
fn nesting_past_the_first_pass_bound_is_refused_even_when_ignored() {
    let mut out = Vec::new();
    let deep = |n: usize| format!(r#"{{"a":{}1{},"b":1}}"#, "[".repeat(n), "]".repeat(n));
    let ignore_a = IgnoreFields::new(["a"]);
    assert!(canonicalize(deep(MAX_NESTING - 2).as_bytes(), &ignore_a, &mut out).is_ok());
    assert!(canonicalize(deep(MAX_NESTING).as_bytes(), &ignore_a, &mut out).is_err());
}

#[test]
fn is_idempotent() {
    let once = canon(r#"{"z":[{"y":"\u00e9","x":1.50}],"a":{}}"#);
    assert_eq!(canon(&once), once);
}

/// Differential tests: the single-pass implementation against the former
/// one ([`reference`]), on documents generated as text and on bytes.
mod differential {
    use proptest::{collection::vec, prelude::*, sample::select};

    use super::super::{
        reference,
        scanner::{Kind, Scanner},
        IgnoreFields,
    };

    /// Inputs are kept small enough that the former walk's budget (16
    /// times the input, at least 64 KiB) never binds: at most 8 nested
    /// containers times 4 KiB.
    const MAX_INPUT: usize = 4 * 1024;

    /// Both implementations' answers: `None` for an error (the sink then
    /// holds garbage, which is not compared).
    fn both(input: &[u8], ignore: &IgnoreFields) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let mut new = Vec::new();
        let new = super::super::canonicalize(input, ignore, &mut new)
            .ok()
            .map(|()| new);
        let mut old = Vec::new();
        let old = reference::canonicalize(input, ignore, &mut old)
            .ok()
            .map(|()| old);
        (new, old)
    }

    fn ws() -> impl Strategy<Value = String> {
        vec(select(vec!["", " ", "\t", "\n", "\r", "  \n  "]), 0..3).prop_map(|w| w.concat())
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,4})?([eE][+-]?[0-9]{1,3})?",
            select(vec![
                "0",
                "-0",
                "1e5",
                "1E+5",
                "1e-5",
                "0.50",
                "-0.0e-0",
                "123456789012345678901234567890",
                "18446744073709551616",
                "-9223372036854775809",
                "1.7976931348623157e309",
            ])
            .prop_map(String::from),
        ]
    }

    /// Writes `value` as a JSON string literal, each character spelt in
    /// one of the ways JSON allows, chosen by `choices`: as it is, as a
    /// short escape, or as `\u` escapes (UTF-16, so surrogate pairs past
    /// the BMP) in lower, upper or mixed case.
    fn spell(value: &str, choices: &[u8]) -> String {
        let mut out = String::from("\"");
        for (i, c) in value.chars().enumerate() {
            let choice = choices.get(i % choices.len().max(1)).copied().unwrap_or(0) % 5;
            let short = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '/' => Some("\\/"),
                '\u{8}' => Some("\\b"),
                '\u{c}' => Some("\\f"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                _ => None,
            };
            let bare = !matches!(c, '"' | '\\') && (c as u32) >= 0x20;
            match (choice, short) {
                (0, _) if bare => out.push(c),
                (0 | 1, Some(short)) => out.push_str(short),
                (0 | 1, None) if bare => out.push(c),
                _ => {
                    let mut units = [0u16; 2];
                    for (j, unit) in c.encode_utf16(&mut units).iter().enumerate() {
                        let upper = choice == 3 || (choice == 4 && j == 0);
                        if upper {
                            out.push_str(&format!("\\u{unit:04X}"));
                        } else {
                            out.push_str(&format!("\\u{unit:04x}"));
                        }
                    }
                }
            }
        }
        out.push('"');
        out
    }

    fn string() -> impl Strategy<Value = String> {
        (
            prop_oneof![
                "[\\x00-\\x1f\"\\\\/ aAzé\u{7f}\u{80}\u{2028}\u{fffd}\u{ffff}😀𝄞\u{10ffff}]{0,8}",
                "\\PC{0,6}",
            ],
            vec(any::<u8>(), 1..6),
        )
            .prop_map(|(value, choices)| spell(&value, &choices))
    }

    /// Keys: often from a small pool with several spellings of the same
    /// key (so duplicates and escaped duplicates are common), else any.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => select(vec![
                r#""a""#, r#""\u0061""#, r#""b""#, r#""A""#, r#""""#, r#""é""#,
                r#""\u00e9""#, r#""\u00E9""#, r#""user""#, r#""\u0075ser""#,
                r#""name""#, r#""metadata""#, r#""request_id""#, r#""messages""#,
                r#""\"""#, r#""\u0022""#, r#""\\""#, r#""😀""#, r#""\ud83d\ude00""#,
                r#""a\/b""#, r#""a/b""#, r#""\n""#, r#""\u000a""#, r#""aa""#,
                r#""a\u0000""#, r#""\u007f""#, r#""z""#,
            ])
            .prop_map(String::from),
            1 => string(),
        ]
    }

    fn ignore() -> impl Strategy<Value = Vec<&'static str>> {
        vec(
            select(vec![
                "a",
                "b",
                "a.b",
                "a.a",
                "user",
                "metadata.request_id",
                "messages.name",
                "é",
                "\"",
                "😀",
                "a/b",
                "\n",
                "b.a.b",
                "name",
                "aa",
                "a.",
            ]),
            1..4,
        )
    }

    /// A valid JSON document, as text, nested up to six containers deep,
    /// with white space everywhere it may go.
    fn document() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            number(),
            string(),
            select(vec!["true", "false", "null"]).prop_map(String::from),
        ];
        let tree = leaf.prop_recursive(6, 48, 5, |inner| {
            prop_oneof![
                (vec((ws(), inner.clone(), ws()), 0..5), ws()).prop_map(|(items, w)| {
                    let items: Vec<String> =
                        items.into_iter().map(|(a, v, b)| a + &v + &b).collect();
                    format!("[{w}{}]", items.join(","))
                }),
                (vec((ws(), key(), ws(), ws(), inner, ws()), 0..5), ws()).prop_map(
                    |(members, w)| {
                        let members: Vec<String> = members
                            .into_iter()
                            .map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"))
                            .collect();
                        format!("{{{w}{}}}", members.join(","))
                    }
                ),
            ]
        });
        (ws(), tree, ws()).prop_map(|(a, t, b)| a + &t + &b)
    }

    /// One change to a document: a byte replaced, removed or inserted, the
    /// text cut short, or a lone surrogate escape put in.
    #[derive(Clone, Debug)]
    enum Mutation {
        Replace(usize, u8),
        Remove(usize),
        Insert(usize, u8),
        Truncate(usize),
        Splice(usize, &'static str),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let byte = prop_oneof![
            select(b"\"\\u/bd8cfeE{}[],: \t0-+.9aA\x00\x1f\x7f\x80\xbf\xc3\xff".to_vec()),
            any::<u8>(),
        ];
        prop_oneof![
            (any::<usize>(), byte.clone()).prop_map(|(at, b)| Mutation::Replace(at, b)),
            any::<usize>().prop_map(Mutation::Remove),
            (any::<usize>(), byte).prop_map(|(at, b)| Mutation::Insert(at, b)),
            any::<usize>().prop_map(Mutation::Truncate),
            (
                any::<usize>(),
                select(vec![
                    "\\ud800",
                    "\\udc00",
                    "\\ud800\\u0041",
                    "\\ud800\\n",
                    "\\uDBFF\\uDFFF",
                    "\\u12",
                    "\\",
                    "\"",
                    "\u{0}",
                ])
            )
                .prop_map(|(at, s)| Mutation::Splice(at, s)),
        ]
    }

    fn mutate(document: &str, mutation: &Mutation) -> Vec<u8> {
        let mut bytes = document.as_bytes().to_vec();
        let len = bytes.len();
        match *mutation {
            Mutation::Replace(at, b) if len > 0 => bytes[at % len] = b,
            Mutation::Remove(at) if len > 0 => {
                bytes.remove(at % len);
            }
            Mutation::Insert(at, b) => bytes.insert(at % (len + 1), b),
            Mutation::Truncate(at) => bytes.truncate(at % (len + 1)),
            Mutation::Splice(at, s) => {
                let at = at % (len + 1);
                bytes.splice(at..at, s.bytes());
            }
            _ => {}
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn documents_canonicalise_as_before(
            document in document(),
            paths in ignore(),
        ) {
            prop_assume!(document.len() <= MAX_INPUT);
            for ignore in [IgnoreFields::default(), IgnoreFields::new(&paths)] {
                let (new, old) = both(document.as_bytes(), &ignore);
                // Generated documents are valid: both must succeed,
                // unless an object has two members of the same name.
                if old.is_none() {
                    let mut out = Vec::new();
                    let why = reference::canonicalize(document.as_bytes(), &ignore, &mut out)
                        .unwrap_err()
                        .to_string();
                    prop_assert!(why.contains("duplicate member name"), "{document:?}: {why}");
                }
                prop_assert_eq!(
                    new.as_deref().map(String::from_utf8_lossy),
                    old.as_deref().map(String::from_utf8_lossy),
                    "{:?} ignoring {:?}", document, paths
                );
            }
        }

        #[test]
        fn changed_documents_are_accepted_and_refused_as_before(
            document in document(),
            mutation in mutation(),
            paths in ignore(),
        ) {
            let bytes = mutate(&document, &mutation);
            prop_assume!(bytes.len() <= MAX_INPUT);
            for ignore in [IgnoreFields::default(), IgnoreFields::new(&paths)] {
                let (new, old) = both(&bytes, &ignore);
                prop_assert_eq!(
                    new, old,
                    "{:?} ignoring {:?}", String::from_utf8_lossy(&bytes), paths
                );
            }
        }

        #[test]
        fn any_bytes_are_accepted_and_refused_as_before(
            bytes in prop_oneof![
                vec(any::<u8>(), 0..48),
                vec(select(b"{}[],:\" \n0123456789-+.eEtrufalsn\\/ubd8A\xc3\xa9".to_vec()), 0..48),
            ],
            paths in ignore(),
        ) {
            for ignore in [IgnoreFields::default(), IgnoreFields::new(&paths)] {
                let (new, old) = both(&bytes, &ignore);
                prop_assert_eq!(new, old, "{:?}", String::from_utf8_lossy(&bytes));
            }
        }

        #[test]
        fn strings_are_classified_as_canonical_escapes_says(literal in string()) {
            let kind = Scanner::new(literal.as_bytes()).string().unwrap();
            prop_assert_eq!(kind == Kind::Plain, !literal.contains('\\'));
            prop_assert_eq!(kind != Kind::Escaped, reference::canonical_escapes(&literal));
        }
    }
}

/// Documents already in canonical form are hashed as they are (the second
/// pass skipped); every near miss takes the walk, with the same output as
/// the former implementation.
#[test]
fn canonical_documents_are_kept_as_they_are_and_near_misses_walked() {
    let both = |input: &str| {
        let mut new = Vec::new();
        let new = canonicalize(input.as_bytes(), &IgnoreFields::default(), &mut new)
            .ok()
            .map(|()| String::from_utf8(new).unwrap());
        let mut old = Vec::new();
        let old =
            super::reference::canonicalize(input.as_bytes(), &IgnoreFields::default(), &mut old)
                .ok()
                .map(|()| String::from_utf8(old).unwrap());
        assert_eq!(new, old, "{input}");
        new
    };
    for canonical in [
        r#"{"a":1,"b":[true,null,{"c":"x\n\"y\"","d":{}}],"e":"\u001f"}"#,
        r#"[{"a":0},{"a":1,"b":2}]"#,
        r#""text""#,
        r#"{"":0,"a":0,"aa":0,"b":0,"é":0}"#,
        r#"{"a\n":0,"a\"":0}"#,
    ] {
        assert_eq!(both(canonical).as_deref(), Some(canonical));
        let mut out = Vec::new();
        let notes = prescan(canonical.as_bytes()).unwrap();
        assert!(notes.canonical, "{canonical}");
        canonicalize(canonical.as_bytes(), &IgnoreFields::new(["z"]), &mut out).unwrap();
        assert_eq!(out, canonical.as_bytes(), "with a field ignored: walked");
    }
    for near_miss in [
        r#"{"b":1,"a":2}"#,
        r#"{"a":1,"a":2}"#,
        r#"{"a":1,"\u0061":2}"#,
        r#"{"a":"\u0041"}"#,
        r#"{"a":"\/"}"#,
        r#"{"\u0062":1,"a":2}"#,
        r#" {"a":1}"#,
        r#"{"a":1} "#,
        r#"{"a": 1}"#,
        r#"[1,2 ]"#,
        r#"{"a":{"c":1,"b":2}}"#,
        r#"{"é":0,"z":0}"#,
    ] {
        assert!(
            !prescan(near_miss.as_bytes()).is_ok_and(|n| n.canonical),
            "{near_miss}"
        );
        both(near_miss);
    }
    // Nesting: within the walk's limit, kept; past it, refused as before.
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert_eq!(both(&nested(MAX_DEPTH)), Some(nested(MAX_DEPTH)));
    assert_eq!(both(&nested(MAX_DEPTH + 1)), None);
}

/// The keys of a few requests, pinned: a change to the canonical form or to
/// the framing changes every key in every store, and must come with a new
/// format version.
#[test]
fn keys_are_pinned() {
    let layer = crate::IdempotencyLayer::new();
    let key = |content_type: &str, body: &str| {
        let (parts, ()) = http::Request::post("https://api.example.com/v1/chat/completions")
            .header("content-type", content_type)
            .header("authorization", "Bearer sk-test")
            .body(())
            .unwrap()
            .into_parts();
        layer
            .key_for(&parts, body.as_bytes())
            .expect("a key")
            .to_hex()
    };
    let pretty = "{\n  \"model\": \"gpt-4o-mini\",\n  \"messages\": [\n    {\"role\": \"user\", \"content\": \"Say \\\"hi\\\"\\n\\u00e9\\/\"}\n  ],\n  \"temperature\": 0.2\n}";
    let compact = r#"{"messages":[{"content":"Say \"hi\"\né/","role":"user"}],"model":"gpt-4o-mini","temperature":0.2}"#;
    let pinned = [
        (
            key("application/json", pretty),
            "784d065bfc46a0c996b1645329a3fbe42d5483e9d98b3ff2e759b819b35a9302",
        ),
        (
            key("application/json", compact),
            "784d065bfc46a0c996b1645329a3fbe42d5483e9d98b3ff2e759b819b35a9302",
        ),
        (
            key("application/json", r#"{"a":1,"a":2}"#),
            "d1bbda2f04b02aaa30734973f0c987c0c38271df10685df59e5dcc857022f352",
        ),
        (
            key("application/json", "not json"),
            "8835646da33e54fb9858cd4d34a1d6a90e9da0c0d9d2c0bb989a32a6ab225ab8",
        ),
        (
            key("text/plain", compact),
            "3e33203b4bc3c03d96fa4c7bdd750938eb92d76ffc9a47dd48f9609049ff436d",
        ),
    ];
    // The pretty and compact forms of one document share their key.
    assert_eq!(pinned[0].0, pinned[1].0);
    for (key, hex) in pinned {
        assert_eq!(key, hex);
    }
}
