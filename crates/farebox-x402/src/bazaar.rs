//! The `bazaar` discovery extension (x402 v2, `specs/extensions/bazaar.md`): what the rail puts
//! under `extensions.bazaar` of every `PAYMENT-REQUIRED`, so that a facilitator that catalogs
//! resources (and farebox's own `GET /discovery/resources`) learns how to call the endpoint.
//!
//! Only what the rail knows is declared: the HTTP method (`GET`/`HEAD`/`DELETE` take query
//! parameters; `POST`/`PUT`/`PATCH` a JSON body, declared as an empty example object because
//! the extension requires one), and for a prefix route (`/weather/*`) the `routeTemplate`
//! (`/weather/:path`) with the request's own `pathParams`. Other methods (`OPTIONS`, custom
//! ones) have no bazaar form and get no extension. `schema` is the JSON Schema (draft 2020-12)
//! that `info` validates against, as the extension requires.

use farebox_core::Resource;
use http::Method;
use serde_json::{Map, Value, json};

/// The extension's key in `extensions`.
pub const KEY: &str = "bazaar";

/// The name of the path parameter a prefix route's template ends in.
pub const PATH_PARAM: &str = "path";

/// `{"bazaar": {info, schema, routeTemplate?}}` for `resource`, or `None` for a method the
/// extension has no form for.
pub fn extensions(resource: &Resource) -> Option<Map<String, Value>> {
    let query = [Method::GET, Method::HEAD, Method::DELETE].contains(&resource.method);
    let body = [Method::POST, Method::PUT, Method::PATCH].contains(&resource.method);
    if !query && !body {
        return None;
    }
    let mut input = Map::new();
    input.insert("type".into(), json!("http"));
    input.insert("method".into(), json!(resource.method.as_str()));
    if body {
        input.insert("bodyType".into(), json!("json"));
        input.insert("body".into(), json!({}));
    }
    let mut schema_input = json!({
        "type": "object",
        "properties": {
            "type": { "type": "string", "const": "http" },
            "method": {
                "type": "string",
                "enum": if query { json!(["GET", "HEAD", "DELETE"]) } else { json!(["POST", "PUT", "PATCH"]) }
            },
            "queryParams": { "type": "object", "additionalProperties": { "type": "string" } },
            "headers": { "type": "object", "additionalProperties": { "type": "string" } }
        },
        "required": ["type", "method"],
        "additionalProperties": false
    });
    if body {
        schema_input["properties"]["bodyType"] =
            json!({ "type": "string", "enum": ["json", "form-data", "text"] });
        schema_input["properties"]["body"] = json!({ "type": "object" });
        schema_input["required"] = json!(["type", "method", "bodyType", "body"]);
    }
    let mut bazaar = Map::new();
    if let Some(prefix) = resource.route.strip_suffix("/*") {
        let rest = resource.path.strip_prefix(prefix).unwrap_or("").trim_start_matches('/');
        let mut params = Map::new();
        params.insert(PATH_PARAM.into(), json!(rest));
        input.insert("pathParams".into(), Value::Object(params));
        schema_input["properties"]["pathParams"] =
            json!({ "type": "object", "additionalProperties": { "type": "string" } });
        bazaar.insert("routeTemplate".into(), json!(format!("{prefix}/:{PATH_PARAM}")));
    }
    bazaar.insert("info".into(), json!({ "input": input }));
    bazaar.insert(
        "schema".into(),
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": { "input": schema_input },
            "required": ["input"]
        }),
    );
    let mut out = Map::new();
    out.insert(KEY.into(), Value::Object(bazaar));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use farebox_core::{Money, Price};

    fn resource(method: Method, path: &str, route: &str) -> Resource {
        Resource {
            method,
            path: path.into(),
            route: route.into(),
            price: Price::one(Money::sats(1)),
            description: None,
            accept_payment: None,
        }
    }

    #[test]
    fn query_and_body_methods_have_their_forms() {
        let get = extensions(&resource(Method::GET, "/joke", "/joke")).unwrap();
        assert_eq!(get[KEY]["info"]["input"], json!({"type": "http", "method": "GET"}));
        assert!(get[KEY].get("routeTemplate").is_none(), "a static route has no template");

        let post = extensions(&resource(Method::POST, "/v1/x", "/v1/x")).unwrap();
        assert_eq!(post[KEY]["info"]["input"]["bodyType"], "json");
        assert_eq!(post[KEY]["schema"]["properties"]["input"]["required"][3], "body");

        assert!(extensions(&resource(Method::OPTIONS, "/a", "/a")).is_none());
    }

    #[test]
    fn prefix_routes_carry_a_template_and_the_concrete_parameter() {
        let ext =
            extensions(&resource(Method::GET, "/weather/lisbon/today", "/weather/*")).unwrap();
        assert_eq!(ext[KEY]["routeTemplate"], "/weather/:path");
        assert_eq!(ext[KEY]["info"]["input"]["pathParams"]["path"], "lisbon/today");
    }
}
