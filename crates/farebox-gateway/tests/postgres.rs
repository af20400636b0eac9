//! Two gateways sharing one PostgreSQL database (its URL read from a key file): the free tier
//! counts across both, and the gateway's tables are migrated once.

mod common;

use farebox_store::testing::TestPostgres;

const ROUTES: &str = r#"
[free_tier]
requests = 3
window_secs = 3600

[[routes]]
path = "/joke"
price = "10 sat"
free_tier = true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_postgres_share_the_free_tier() {
    let pg = TestPostgres::start();
    let upstream = common::Upstream::default();
    let upstream_addr = common::serve_router(common::upstream_router(upstream.clone())).await;
    let url_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(url_file.path(), pg.url()).unwrap();
    let text = format!(
        "{}\n[store]\npostgres = {{ key_file = \"{}\" }}\n{ROUTES}",
        common::base_config(upstream_addr, ""),
        url_file.path().display()
    );
    let (a, b) = tokio::join!(
        common::start_with(upstream.clone(), upstream_addr, &text),
        common::start_with(upstream.clone(), upstream_addr, &text)
    );
    let http = reqwest::Client::new();
    let mut served = 0;
    for g in [&a, &b, &a, &b, &a, &b] {
        if http.get(g.url("/joke")).send().await.unwrap().status() == 200 {
            served += 1;
        }
    }
    assert_eq!(served, 3, "a free tier of 3 is 3 across both instances");
    assert_eq!(upstream.count(), 3);
    let ready = http.get(a.url("/_farebox/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}
