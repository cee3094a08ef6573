//! The OpenAPI document, `api/openapi.json`, checked against itself and against the routes.
//!
//! The document is written by hand, so nothing but these tests keeps it true. They check that
//! it is OpenAPI 3.1, that every `$ref` in it resolves, that every path variable is declared,
//! and that every error response is a problem body naming its codes.
//!
//! The drift check compares the document's paths and methods with the routes the code serves.
//! Building the whole app for that would need a log, a read store and keys, so instead a small
//! tokenizer reads the routing source files themselves (through `include_str!`, so a change to
//! them rebuilds this test) and collects every `.route("/path", get(a).post(b))` call, plus the
//! `/openapi.json` route that Swagger UI's `external_url_unchecked` serves. The same reading
//! tells which handlers take a `Caller`, so the document's public operations must be exactly
//! the ones whose handler needs no credentials. Route shapes the tokenizer does not understand
//! (`.nest`, `any(..)`, a path that is not a literal) fail loudly rather than being skipped.
//! Swagger UI's own pages at `/swagger-ui` are HTML, not API, and stay out of the document.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The document under test, the same file `routes/docs.rs` serves.
const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// The root router: it merges the others and routes `/health` itself.
const ROOT_ROUTER: Source = Source {
    name: "api/src/routes/mod.rs",
    text: include_str!("../src/routes/mod.rs"),
};

/// Each router the root merges: the expression `routes/mod.rs` merges it by, and its source.
const MERGED_ROUTERS: [(&str, Source); 5] = [
    (
        "crate::auth::router()",
        Source {
            name: "api/src/auth/routes.rs",
            text: include_str!("../src/auth/routes.rs"),
        },
    ),
    (
        "accounts::router()",
        Source {
            name: "api/src/routes/accounts.rs",
            text: include_str!("../src/routes/accounts.rs"),
        },
    ),
    (
        "transactions::router()",
        Source {
            name: "api/src/routes/transactions.rs",
            text: include_str!("../src/routes/transactions.rs"),
        },
    ),
    (
        "notifications::router()",
        Source {
            name: "api/src/routes/notifications.rs",
            text: include_str!("../src/routes/notifications.rs"),
        },
    ),
    (
        "docs::router()",
        Source {
            name: "api/src/routes/docs.rs",
            text: include_str!("../src/routes/docs.rs"),
        },
    ),
];

/// The axum method routers the tokenizer recognises, named as OpenAPI names the methods.
const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Router methods that would add routes this reader does not see. (A method router it does not
/// know, such as `any(..)` or `on(..)`, fails as a route with no known method.)
const UNSUPPORTED_ROUTER_CALLS: [&str; 3] = [".nest", ".nest_service", ".route_service"];

#[derive(Clone, Copy)]
struct Source {
    name: &'static str,
    text: &'static str,
}

/// One method on one path, as the code routes it.
#[derive(Debug)]
struct Route {
    path: String,
    method: String,
    /// The handler function, when it lives in the same source; `None` for Swagger UI's route.
    handler: Option<String>,
    source: &'static str,
}

// ---- the tests ------------------------------------------------------------------------------

#[test]
fn the_document_is_json_and_declares_openapi_3_1() {
    let document = document();

    let version = document["openapi"].as_str().expect("`openapi` is a string");

    assert!(
        version.starts_with("3.1"),
        "openapi is {version}, not 3.1.x"
    );
    assert!(document["info"]["title"].is_string());
    assert!(
        document["paths"]
            .as_object()
            .is_some_and(|paths| !paths.is_empty())
    );
}

#[test]
fn every_routed_method_is_documented_and_every_documented_method_is_routed() {
    let routed: BTreeSet<(String, String)> = routes().iter().map(route_key).collect();
    let documented: BTreeSet<(String, String)> = operations(&document())
        .into_iter()
        .map(|(path, method, _)| (template_shape(&path), method))
        .collect();

    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();

    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "openapi.json has drifted from the router\n  routed but not documented: \
         {undocumented:?}\n  documented but not routed: {unrouted:?}"
    );
}

#[test]
fn the_route_sources_read_here_are_every_router_the_app_merges() {
    let merged = merged_router_expressions(&tokens(ROOT_ROUTER.text));
    let known: Vec<&str> = MERGED_ROUTERS
        .iter()
        .map(|(expression, _)| *expression)
        .collect();

    assert_eq!(
        merged, known,
        "routes/mod.rs merges other routers than this test reads; add their sources to \
         MERGED_ROUTERS"
    );
}

#[test]
fn an_operation_is_public_exactly_when_its_handler_takes_no_caller() {
    let document = document();
    let public_in_code: BTreeMap<(String, String), bool> = all_sources()
        .flat_map(|source| {
            let tokens = tokens(source.text);
            routes_in(source.name, &tokens)
                .into_iter()
                .map(|route| (route_key(&route), !handler_takes_caller(&tokens, &route)))
                .collect::<Vec<_>>()
        })
        .collect();

    for (path, method, operation) in operations(&document) {
        let public_in_document = operation["security"].as_array().is_some_and(Vec::is_empty);
        let key = (template_shape(&path), method.clone());
        let Some(public_in_code) = public_in_code.get(&key) else {
            continue; // The drift check reports an operation with no route.
        };
        assert_eq!(
            public_in_document, *public_in_code,
            "{method} {path}: `security: []` in the document must match a handler without \
             a Caller"
        );
    }
}

#[test]
fn every_ref_resolves_within_the_document() {
    let document = document();
    let mut refs = Vec::new();
    collect_refs(&document, &mut refs);

    let broken: Vec<&String> = refs
        .iter()
        .filter(|reference| resolve(&document, reference).is_none())
        .collect();

    assert!(!refs.is_empty(), "the document uses no $ref at all");
    assert!(broken.is_empty(), "unresolved $ref: {broken:?}");
}

#[test]
fn every_path_variable_is_declared_as_a_required_path_parameter() {
    let document = document();

    for (path, method, operation) in operations(&document) {
        let variables: BTreeSet<String> = template_variables(&path).into_iter().collect();
        let declared: BTreeSet<String> = parameters(&document, &operation)
            .into_iter()
            .filter(|parameter| parameter["in"] == "path")
            .inspect(|parameter| {
                assert_eq!(
                    parameter["required"], true,
                    "{method} {path}: path parameter"
                );
            })
            .filter_map(|parameter| parameter["name"].as_str().map(str::to_owned))
            .collect();

        assert_eq!(
            variables, declared,
            "{method} {path}: path variables and parameters"
        );
    }
}

#[test]
fn every_error_response_is_a_problem_that_names_its_codes() {
    let document = document();

    for (path, method, operation) in operations(&document) {
        let responses = operation["responses"].as_object().expect("responses");
        for (status, response) in responses {
            if !(status.starts_with('4') || status.starts_with('5')) {
                continue;
            }
            let response = follow(&document, response);
            let where_ = format!("{method} {path} {status}");
            let schema = &response["content"]["application/problem+json"]["schema"];
            assert_eq!(schema["$ref"], "#/components/schemas/Problem", "{where_}");
            let description = response["description"].as_str().unwrap_or_default();
            assert!(
                description.contains('`'),
                "{where_}: name the codes in the description"
            );
        }
    }
}

// ---- the document ---------------------------------------------------------------------------

fn document() -> Value {
    serde_json::from_str(OPENAPI_JSON).expect("openapi.json is valid JSON")
}

/// Every operation as (path, uppercase method, operation object).
fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let paths = document["paths"].as_object().expect("`paths` is an object");
    let mut operations = Vec::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for (key, operation) in item {
            if HTTP_METHODS.contains(&key.as_str()) {
                operations.push((path.clone(), key.to_uppercase(), operation.clone()));
            }
        }
    }
    operations
}

/// The operation's parameters, with `$ref`s followed.
fn parameters(document: &Value, operation: &Value) -> Vec<Value> {
    let Some(parameters) = operation["parameters"].as_array() else {
        return Vec::new();
    };
    parameters
        .iter()
        .map(|parameter| follow(document, parameter).clone())
        .collect()
}

/// The object a `$ref` points at, or `value` itself when it is not a reference.
fn follow<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(reference) => resolve(document, reference).expect("$ref resolves"),
        None => value,
    }
}

/// A local reference (`#/components/...`) resolved as a JSON pointer; `None` otherwise.
fn resolve<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
    document.pointer(reference.strip_prefix('#')?)
}

fn collect_refs(value: &Value, refs: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(reference)) = object.get("$ref") {
                refs.push(reference.clone());
            }
            object.values().for_each(|child| collect_refs(child, refs));
        }
        Value::Array(items) => items.iter().for_each(|child| collect_refs(child, refs)),
        _ => {}
    }
}

/// The names of a path template's variables: `/apikey/{keyId}` has `keyId`.
fn template_variables(path: &str) -> Vec<String> {
    path.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}'))
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// A path with its variables' names erased, `/apikey/{}`, so that the code may call a
/// segment `key_id` while the document calls it `keyId`.
fn template_shape(path: &str) -> String {
    let mut shape = String::with_capacity(path.len());
    let mut in_variable = false;
    for character in path.chars() {
        match character {
            '{' => in_variable = true,
            '}' => {
                in_variable = false;
                shape.push_str("{}");
            }
            _ if in_variable => {}
            _ => shape.push(character),
        }
    }
    shape
}

// ---- the route table, read from the source ------------------------------------------------------

fn all_sources() -> impl Iterator<Item = Source> {
    std::iter::once(ROOT_ROUTER).chain(MERGED_ROUTERS.iter().map(|(_, source)| *source))
}

/// Every route of every routing source; panics on a shape it cannot read.
fn routes() -> Vec<Route> {
    let routes: Vec<Route> = all_sources()
        .flat_map(|source| routes_in(source.name, &tokens(source.text)))
        .collect();
    assert!(
        routes.len() > 1,
        "found almost no routes; has the routing code moved?"
    );
    routes
}

fn route_key(route: &Route) -> (String, String) {
    (template_shape(&route.path), route.method.clone())
}

/// The routes one source declares: its `.route(..)` calls and Swagger UI's document route.
fn routes_in(source: &'static str, tokens: &[Token]) -> Vec<Route> {
    refuse_unsupported_calls(source, tokens);
    let mut routes = Vec::new();
    for (index, _) in tokens.iter().enumerate() {
        let rest = &tokens[index..];
        if starts_call(rest, ".route") {
            routes.extend(route_call(source, &rest[3..]));
        } else if starts_call(rest, "external_url_unchecked") {
            routes.push(swagger_document_route(source, &rest[2..]));
        }
    }
    routes
}

/// Whether `tokens` open a call of `name` (`.name(` when `name` starts with a dot).
fn starts_call(tokens: &[Token], name: &str) -> bool {
    let (tokens, name) = match name.strip_prefix('.') {
        Some(name) if tokens.first() == Some(&Token::Punct('.')) => (&tokens[1..], name),
        Some(_) => return false,
        None => (tokens, name),
    };
    matches!(tokens, [Token::Ident(ident), Token::Punct('('), ..] if ident == name)
}

fn refuse_unsupported_calls(source: &str, tokens: &[Token]) {
    for (index, _) in tokens.iter().enumerate() {
        for call in UNSUPPORTED_ROUTER_CALLS {
            let found = starts_call(&tokens[index..], call);
            assert!(
                !found,
                "{source}: `{call}(..)` is not understood by this drift check"
            );
        }
    }
}

/// The routes of one `.route("/path", get(a).post(b))` call; `tokens` start at the path.
fn route_call(source: &'static str, tokens: &[Token]) -> Vec<Route> {
    let Some(Token::Str(path)) = tokens.first() else {
        panic!("{source}: a `.route(` whose path is not a string literal");
    };
    assert_eq!(
        tokens.get(1),
        Some(&Token::Punct(',')),
        "{source}: `.route({path:?}` shape"
    );

    let methods = method_calls(&tokens[2..]);
    assert!(
        !methods.is_empty(),
        "{source}: route {path} has no method this test knows"
    );
    methods
        .into_iter()
        .map(|(method, handler)| Route {
            path: path.clone(),
            method: method.to_uppercase(),
            handler,
            source,
        })
        .collect()
}

/// The `method(handler)` calls of a method router, up to the `)` that closes `.route(`.
fn method_calls(tokens: &[Token]) -> Vec<(String, Option<String>)> {
    let mut depth = 0_usize;
    let mut calls = Vec::new();
    for (index, token) in tokens.iter().enumerate() {
        match token {
            Token::Punct('(' | '[' | '{') => depth += 1,
            Token::Punct(')') if depth == 0 => break,
            Token::Punct(')' | ']' | '}') => depth -= 1,
            Token::Ident(name) if depth == 0 && is_method_call(tokens, index) => {
                calls.push((name.clone(), ident_at(tokens, index + 2)));
            }
            _ => {}
        }
    }
    calls
}

/// Whether `tokens[index]` is an HTTP method router called as a function: `get(`.
fn is_method_call(tokens: &[Token], index: usize) -> bool {
    let is_method =
        matches!(&tokens[index], Token::Ident(name) if HTTP_METHODS.contains(&name.as_str()));
    is_method && tokens.get(index + 1) == Some(&Token::Punct('('))
}

/// Swagger UI serves the document at the URL given to `external_url_unchecked("...")`.
fn swagger_document_route(source: &'static str, tokens: &[Token]) -> Route {
    let Some(Token::Str(path)) = tokens.first() else {
        panic!("{source}: `external_url_unchecked(` without a literal url");
    };
    Route {
        path: path.clone(),
        method: "GET".to_owned(),
        handler: None,
        source,
    }
}

fn ident_at(tokens: &[Token], index: usize) -> Option<String> {
    match tokens.get(index) {
        Some(Token::Ident(name)) => Some(name.clone()),
        _ => None,
    }
}

/// Whether the route's handler, found as `fn handler(` in the same source, has a `Caller`
/// among its arguments.
fn handler_takes_caller(tokens: &[Token], route: &Route) -> bool {
    let Some(handler) = &route.handler else {
        return false;
    };
    let function = Token::Ident(handler.clone());
    let start = tokens
        .windows(3)
        .position(|window| {
            window[0] == Token::Ident("fn".to_owned())
                && window[1] == function
                && window[2] == Token::Punct('(')
        })
        .unwrap_or_else(|| panic!("{}: no `fn {handler}(` for {}", route.source, route.path));
    let arguments = &tokens[start + 3..];
    let end = closing_paren(arguments);
    arguments[..end].contains(&Token::Ident("Caller".to_owned()))
}

/// Index of the `)` that closes a list whose `(` came just before `tokens`.
fn closing_paren(tokens: &[Token]) -> usize {
    let mut depth = 0_usize;
    for (index, token) in tokens.iter().enumerate() {
        match token {
            Token::Punct(')') if depth == 0 => return index,
            Token::Punct('(' | '[' | '{' | '<') => depth += 1,
            Token::Punct(')' | ']' | '}' | '>') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    panic!("unbalanced parentheses");
}

/// The expressions `routes/mod.rs` passes to `.merge(..)`, as written without spaces.
fn merged_router_expressions(tokens: &[Token]) -> Vec<String> {
    let mut merged = Vec::new();
    for (index, _) in tokens.iter().enumerate() {
        if starts_call(&tokens[index..], ".merge") {
            let arguments = &tokens[index + 3..];
            let end = closing_paren(arguments);
            merged.push(arguments[..end].iter().map(Token::text).collect());
        }
    }
    merged
}

// ---- a Rust tokenizer, just enough for the route table --------------------------------------

/// A token of Rust source. Comments and whitespace are dropped; so are lifetimes, numbers and
/// char literals, which the route table never needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    /// A string literal's contents, escapes of `"` and `\` undone.
    Str(String),
    Punct(char),
}

impl Token {
    fn text(&self) -> String {
        match self {
            Token::Ident(name) => name.clone(),
            Token::Str(text) => format!("{text:?}"),
            Token::Punct(character) => character.to_string(),
        }
    }
}

fn tokens(source: &str) -> Vec<Token> {
    let characters: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut index = 0;
    while index < characters.len() {
        let (token, next) = token_at(&characters, index);
        tokens.extend(token);
        assert!(next > index, "the tokenizer stalled at character {index}");
        index = next;
    }
    tokens
}

/// The token starting at `index`, if any, and the index after it.
fn token_at(characters: &[char], index: usize) -> (Option<Token>, usize) {
    let at = |offset: usize| characters.get(index + offset).copied();
    match (at(0), at(1)) {
        (Some(c), _) if c.is_whitespace() => (None, index + 1),
        (Some('/'), Some('/')) => (None, end_of_line(characters, index)),
        (Some('/'), Some('*')) => (None, end_of_block_comment(characters, index)),
        (Some('"'), _) => string_literal(characters, index + 1),
        (Some('\''), _) => (None, after_quote(characters, index)),
        (Some(c), _) if c.is_alphanumeric() || c == '_' => word(characters, index),
        (Some(c), _) => (Some(Token::Punct(c)), index + 1),
        (None, _) => (None, index + 1),
    }
}

fn end_of_line(characters: &[char], index: usize) -> usize {
    characters[index..]
        .iter()
        .position(|&c| c == '\n')
        .map_or(characters.len(), |offset| index + offset + 1)
}

fn end_of_block_comment(characters: &[char], index: usize) -> usize {
    let mut depth = 0_usize;
    let mut at = index;
    while at + 1 < characters.len() {
        match (characters[at], characters[at + 1]) {
            ('/', '*') => depth += 1,
            ('*', '/') if depth == 1 => return at + 2,
            ('*', '/') => depth -= 1,
            _ => {
                at += 1;
                continue;
            }
        }
        at += 2;
    }
    characters.len()
}

/// A `"..."` literal whose contents start at `index`.
fn string_literal(characters: &[char], index: usize) -> (Option<Token>, usize) {
    let mut text = String::new();
    let mut at = index;
    while let Some(&c) = characters.get(at) {
        match c {
            '"' => return (Some(Token::Str(text)), at + 1),
            '\\' => {
                text.extend(characters.get(at + 1));
                at += 2;
            }
            _ => {
                text.push(c);
                at += 1;
            }
        }
    }
    panic!("a string literal never ends");
}

/// Skips a char literal (`'a'`, `'\n'`, `'"'`) or just the quote of a lifetime (`'static`).
fn after_quote(characters: &[char], index: usize) -> usize {
    match (characters.get(index + 1), characters.get(index + 2)) {
        (Some('\\'), _) => {
            let close = characters[index + 2..].iter().position(|&c| c == '\'');
            close.map_or(characters.len(), |offset| index + 2 + offset + 1)
        }
        (Some(_), Some('\'')) => index + 3,
        _ => index + 1,
    }
}

/// An identifier or number; a raw string (`r"..."`, `r#"..."#`) when `r` opens one.
fn word(characters: &[char], index: usize) -> (Option<Token>, usize) {
    let end = characters[index..]
        .iter()
        .position(|&c| !(c.is_alphanumeric() || c == '_'))
        .map_or(characters.len(), |offset| index + offset);
    let word: String = characters[index..end].iter().collect();
    let opens_raw = matches!(characters.get(end), Some('"' | '#'));
    if matches!(word.as_str(), "r" | "br" | "cr") && opens_raw {
        return raw_string_literal(characters, end);
    }
    if matches!(word.as_str(), "b" | "c") && characters.get(end) == Some(&'"') {
        return string_literal(characters, end + 1);
    }
    (Some(Token::Ident(word)), end)
}

/// A raw string whose `#`s or opening `"` start at `index`.
fn raw_string_literal(characters: &[char], index: usize) -> (Option<Token>, usize) {
    let hashes = characters[index..]
        .iter()
        .take_while(|&&c| c == '#')
        .count();
    let start = index + hashes + 1;
    let closing: Vec<char> = std::iter::once('"')
        .chain(std::iter::repeat_n('#', hashes))
        .collect();
    let close = characters[start..]
        .windows(closing.len())
        .position(|window| window == closing.as_slice())
        .expect("a raw string literal never ends");
    let text = characters[start..start + close].iter().collect();
    (Some(Token::Str(text)), start + close + closing.len())
}

#[test]
fn the_tokenizer_reads_a_route_table_through_comments_strings_and_lifetimes() {
    let source = r##"
        // .route("/commented", get(nothing))
        /* .route("/blocked", /* nested */ get(nothing)) */
        fn router<'a>() -> Router { let quote = '"'; let raw = r#"x"#;
            Router::new()
                .route("/things/{thing_id}", get(show).post(create))
                .route("/health", axum::routing::get(health).layer(x))
        }
        async fn show(caller: Caller, Path(id): Path<Uuid>) {}
        async fn create(body: JsonBody<Value>) {}
    "##;
    let tokens = tokens(source);

    let routes = routes_in("example.rs", &tokens);
    let found: Vec<(&str, &str, Option<&str>)> = routes
        .iter()
        .map(|route| {
            (
                route.path.as_str(),
                route.method.as_str(),
                route.handler.as_deref(),
            )
        })
        .collect();

    assert_eq!(
        found,
        [
            ("/things/{thing_id}", "GET", Some("show")),
            ("/things/{thing_id}", "POST", Some("create")),
            ("/health", "GET", Some("health")),
        ]
    );
    assert!(handler_takes_caller(&tokens, &routes[0]));
    assert!(!handler_takes_caller(&tokens, &routes[1]));
}
