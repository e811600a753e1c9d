//! Claim-based access rules end to end: two teams share a collection whose `read_filter` and
//! `write_filter` come from the `team` claim. Each team reads (Pull, Subscribe, Fetch,
//! ReconcileList) exactly its documents, whoever wrote them; a reader's selector only narrows
//! that; a push across the boundary is PERMISSION_DENIED for the whole batch and reveals
//! nothing of the document; a token with changed claims expires its checkpoints (streams
//! resync) and the copy is mended within the new scope; `either` adds the owner rule.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use syncline::config::Config;
use syncline::proto::replication_service_client::ReplicationServiceClient;
use syncline::proto::{
    ChangeRow, Checkpoint, Document, FetchRequest, PullRequest, PushRequest, ReconcileListRequest,
    SubscribeRequest, SubscribeResponse, subscribe_response,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

use crate::common::{TestServer, body, doc, fresh_database, insert, stream_documents, update};

const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

/// Adds the caller's token to every request.
type AddToken = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Send>;
type Client = ReplicationServiceClient<InterceptedService<Channel, AddToken>>;

/// A token for `sub` with `claims` merged in (and the service scope when `service`).
fn token(sub: &str, claims: Value, service: bool) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let mut all = json!({"sub": sub, "exp": exp});
    if service {
        all["scope"] = json!("syncline:service");
    }
    if let (Some(all), Value::Object(extra)) = (all.as_object_mut(), claims) {
        all.extend(extra);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &all,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

async fn server(access: &str) -> TestServer {
    let db = fresh_database().await;
    let mut c = Config::from_toml(&format!(
        r#"
        listen = "127.0.0.1:0"
        metrics_enabled = false
        visibility_wait_ms = 30000
        [auth]
        mode = "jwt"
        hs256_secret = "{SECRET}"
        [[collections]]
        name = "projects"
        filter_fields = {{ team = "string", done = "boolean" }}
        access = "{access}"
        read_filter = {{ team = {{ "$claim" = "team" }} }}
        write_filter = {{ team = {{ "$claim" = "team" }}, done = {{ "$exists" = true }} }}
        "#
    ))
    .expect("config parses");
    c.database_url = Some(db);
    TestServer::start_with(c).await
}

/// A client whose every call carries `token`.
async fn client(server: &TestServer, token: String) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect");
    let header: tonic::metadata::MetadataValue<_> =
        format!("Bearer {token}").parse().expect("header");
    let add: AddToken = Box::new(move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", header.clone());
        Ok(r)
    });
    ReplicationServiceClient::with_interceptor(channel, add)
}

async fn try_push(
    c: &mut Client,
    rows: Vec<ChangeRow>,
    mode: i32,
) -> Result<Vec<Document>, Status> {
    Ok(c.push(PushRequest {
        collection: "projects".into(),
        rows,
        mode,
        idempotency_key: String::new(),
    })
    .await?
    .into_inner()
    .conflicts)
}

async fn try_pull(
    c: &mut Client,
    selector: &Value,
    token: &str,
) -> Result<(Vec<Document>, String), Status> {
    let selector = if selector.as_object().is_some_and(|o| o.is_empty()) {
        Vec::new()
    } else {
        selector.to_string().into_bytes()
    };
    let r = c
        .pull(PullRequest {
            collection: "projects".into(),
            checkpoint: Some(Checkpoint {
                token: token.into(),
            }),
            limit: 100,
            selector,
        })
        .await?
        .into_inner();
    Ok((
        r.documents,
        r.checkpoint.map(|c| c.token).unwrap_or_default(),
    ))
}

/// Pulls until an empty page (bounded); the documents and the last checkpoint.
async fn pull_all(c: &mut Client, selector: &Value, token: &str) -> (Vec<Document>, String) {
    let (mut all, mut token) = (Vec::new(), token.to_owned());
    for _ in 0..1000 {
        let (docs, next) = try_pull(c, selector, &token).await.expect("pull");
        if docs.is_empty() {
            return (all, token);
        }
        all.extend(docs);
        token = next;
    }
    panic!("pull_all did not finish");
}

fn ids(docs: &[Document]) -> Vec<String> {
    let mut ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
    ids.sort();
    ids
}

fn project(id: &str, team: &str, title: &str) -> Document {
    doc(id, json!({"team": team, "done": false, "title": title}))
}

/// The server's state of `id` as an assumed state (read with a service token).
async fn current(server: &TestServer, id: &str) -> Document {
    let mut service = client(server, token("ops", json!({}), true)).await;
    let fetched = service
        .fetch(FetchRequest {
            collection: "projects".into(),
            ids: vec![id.into()],
            selector: Vec::new(),
        })
        .await
        .expect("fetch")
        .into_inner();
    fetched.documents.into_iter().next().expect("stored")
}

/// Pushes `new` over the server's current state of its id, as `c`.
async fn replace(
    server: &TestServer,
    c: &mut Client,
    new: Document,
) -> Result<Vec<Document>, Status> {
    let assumed = current(server, &new.id).await;
    try_push(c, vec![update(new, assumed)], 0).await
}

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn each_team_reads_exactly_its_documents_whoever_wrote_them() {
    let server = server("claims").await;
    let mut alice = client(&server, token("alice", json!({"team": "blue"}), false)).await;
    let mut bob = client(&server, token("bob", json!({"team": "blue"}), false)).await;
    let mut carol = client(&server, token("carol", json!({"team": "red"}), false)).await;
    let mut nobody = client(&server, token("dan", json!({}), false)).await;
    try_push(&mut alice, vec![insert(project("b1", "blue", "plan"))], 0)
        .await
        .expect("alice");
    try_push(&mut carol, vec![insert(project("r1", "red", "secret"))], 0)
        .await
        .expect("carol");

    let (blue, bob_checkpoint) = pull_all(&mut bob, &json!({}), "").await;
    assert_eq!(
        ids(&blue),
        ["b1"],
        "bob reads alice's blue document, not red's"
    );
    let (red, _) = pull_all(&mut carol, &json!({}), "").await;
    assert_eq!(ids(&red), ["r1"]);
    let (none, _) = pull_all(&mut nobody, &json!({}), "").await;
    assert!(
        none.is_empty(),
        "a token without the claim reads nothing: {none:?}"
    );

    // A reader's selector narrows the rule, never widens it.
    let (widened, _) = pull_all(&mut bob, &json!({"team": "red"}), "").await;
    assert!(
        widened.is_empty(),
        "a selector cannot escape the read rule: {widened:?}"
    );
    let (either, _) = pull_all(
        &mut bob,
        &json!({"$or": [{"team": "red"}, {"done": false}]}),
        "",
    )
    .await;
    assert_eq!(ids(&either), ["b1"]);

    // A teammate edits another member's document; a stream of the team sees it, and never
    // the other team's writes.
    let mut stream = subscribe(&mut bob, &bob_checkpoint).await;
    let assumed = current(&server, "b1").await;
    let edited = doc(
        "b1",
        json!({"team": "blue", "done": true, "title": "plan v2"}),
    );
    try_push(&mut bob, vec![update(edited, assumed)], 0)
        .await
        .expect("teammate writes");
    try_push(&mut carol, vec![insert(project("r2", "red", "more"))], 0)
        .await
        .expect("carol");
    try_push(&mut alice, vec![insert(project("b2", "blue", "next"))], 0)
        .await
        .expect("alice");
    let (streamed, _) = stream_documents(&mut stream, 2).await;
    assert_eq!(
        streamed
            .iter()
            .map(|d| (d.id.as_str(), body(d)["title"].clone()))
            .collect::<Vec<_>>(),
        [("b1", json!("plan v2")), ("b2", json!("next"))],
        "the stream carries the team's changes only"
    );

    // Fetch and ReconcileList (what a replica reconciles with) see the same scope.
    let fetched = bob
        .fetch(FetchRequest {
            collection: "projects".into(),
            ids: vec!["b1".into(), "r1".into(), "r2".into()],
            selector: Vec::new(),
        })
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(ids(&fetched.documents), ["b1"]);
    let listed = carol
        .reconcile_list(ReconcileListRequest {
            collection: "projects".into(),
            bucket_bits: 0,
            buckets: vec![0],
            selector: Vec::new(),
        })
        .await
        .expect("list")
        .into_inner();
    let mut listed: Vec<String> = listed.documents.into_iter().map(|d| d.id).collect();
    listed.sort();
    assert_eq!(listed, ["r1", "r2"]);

    // A service principal reads everything.
    let mut ops = client(&server, token("ops", json!({}), true)).await;
    let (all, _) = pull_all(&mut ops, &json!({}), "").await;
    assert_eq!(ids(&all), ["b1", "b2", "r1", "r2"]);
}

async fn subscribe(c: &mut Client, token: &str) -> Streaming<SubscribeResponse> {
    c.subscribe(SubscribeRequest {
        collection: "projects".into(),
        checkpoint: Some(Checkpoint {
            token: token.into(),
        }),
        selector: Vec::new(),
    })
    .await
    .expect("subscribe")
    .into_inner()
}

#[tokio::test]
async fn writes_across_the_team_boundary_are_refused_whole_and_reveal_nothing() {
    let server = server("claims").await;
    let mut alice = client(&server, token("alice", json!({"team": "blue"}), false)).await;
    let mut carol = client(&server, token("carol", json!({"team": "red"}), false)).await;
    try_push(
        &mut alice,
        vec![insert(project("b1", "blue", "blue-secret"))],
        0,
    )
    .await
    .expect("alice");

    // Carol's batch: a fine red document, then an edit of blue's document. Nothing is written.
    let assumed = current(&server, "b1").await;
    let err = try_push(
        &mut carol,
        vec![
            insert(project("r1", "red", "fine")),
            update(project("b1", "red", "taken"), assumed.clone()),
        ],
        0,
    )
    .await
    .expect_err("a write across the boundary");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(reason(&err), "OUTSIDE_WRITE_FILTER");
    assert!(err.message().contains("rows[1]"), "{}", err.message());
    assert!(
        !err.message().contains("blue"),
        "reveals nothing: {}",
        err.message()
    );
    let mut ops = client(&server, token("ops", json!({}), true)).await;
    let (all, _) = pull_all(&mut ops, &json!({}), "").await;
    assert_eq!(ids(&all), ["b1"], "the whole batch was refused");
    assert_eq!(body(&all[0])["title"], "blue-secret");

    // Even a blind insert of an existing id answers without the document (no conflict state).
    let err = try_push(&mut carol, vec![insert(project("b1", "red", "x"))], 0)
        .await
        .expect_err("blind insert over another team's id");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(!err.message().contains("blue"), "{}", err.message());

    // A new document for the other team, or one that breaks the write rule's other clause.
    for (row, why) in [
        (
            project("r2", "blue", "planted"),
            "a document for another team",
        ),
        (
            doc("r3", json!({"team": "red"})),
            "done is required by the write rule",
        ),
    ] {
        let err = try_push(&mut carol, vec![insert(row)], 0)
            .await
            .expect_err(why);
        assert_eq!(err.code(), Code::PermissionDenied, "{why}");
        assert_eq!(reason(&err), "OUTSIDE_WRITE_FILTER", "{why}");
        assert!(err.message().contains("write_filter"), "{}", err.message());
    }
    // Moving one's own team's document out of the team is a write outside the rule too.
    let err = try_push(
        &mut alice,
        vec![update(project("b1", "red", "moved"), assumed.clone())],
        0,
    )
    .await
    .expect_err("moving out");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Per-row: only the refused row is refused, without the server's state.
    let refused = carol
        .push(PushRequest {
            collection: "projects".into(),
            rows: vec![
                update(project("b1", "red", "taken"), assumed),
                insert(project("r4", "red", "ok")),
            ],
            mode: syncline::proto::PushMode::PerRow as i32,
            idempotency_key: String::new(),
        })
        .await
        .expect("per-row push")
        .into_inner();
    assert_eq!(refused.refused.len(), 1, "{refused:?}");
    assert_eq!(refused.refused[0].index, 0);
    assert_eq!(refused.refused[0].reason, "OUTSIDE_WRITE_FILTER");
    assert!(
        refused.refused[0].current.is_none(),
        "no state of blue's document is shown"
    );
    let (red, _) = pull_all(&mut carol, &json!({}), "").await;
    assert_eq!(ids(&red), ["r4"]);

    // A claim of the wrong type does not fit the rules: refused, naming the claim.
    let mut odd = client(&server, token("odd", json!({"team": 7}), false)).await;
    let err = try_pull(&mut odd, &json!({}), "")
        .await
        .expect_err("a numeric team");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("\"team\""), "{}", err.message());
}

#[tokio::test]
async fn changed_claims_expire_checkpoints_and_the_copy_is_mended_in_the_new_scope() {
    let server = server("claims").await;
    let mut ops = client(&server, token("ops", json!({}), true)).await;
    try_push(
        &mut ops,
        vec![
            insert(project("b1", "blue", "one")),
            insert(project("b2", "blue", "two")),
            insert(project("r1", "red", "three")),
        ],
        0,
    )
    .await
    .expect("seed");
    let mut as_blue = client(&server, token("eve", json!({"team": "blue"}), false)).await;
    let (blue, checkpoint) = pull_all(&mut as_blue, &json!({}), "").await;
    assert_eq!(ids(&blue), ["b1", "b2"]);

    // A document moved to another team leaves the blue readers' scope: they get a removal.
    replace(&server, &mut ops, project("b2", "red", "two"))
        .await
        .expect("move");
    let (moved, checkpoint) = pull_all(&mut as_blue, &json!({}), &checkpoint).await;
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(moved[0].deleted && moved[0].left_scope, "{:?}", moved[0]);
    assert_eq!(moved[0].id, "b2");
    assert_eq!(
        body(&moved[0]),
        json!({}),
        "nothing of the red state is sent"
    );

    // Eve moves to the red team: her old checkpoint is expired (not refused), as is a stream's.
    let mut as_red = client(&server, token("eve", json!({"team": "red"}), false)).await;
    let err = try_pull(&mut as_red, &json!({}), &checkpoint)
        .await
        .expect_err("another scope");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(&err), "CHECKPOINT_EXPIRED");
    let mut stream = subscribe(&mut as_red, &checkpoint).await;
    let first = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("an event")
        .expect("ok")
        .expect("open");
    assert!(
        matches!(first.event, Some(subscribe_response::Event::Resync(_))),
        "{first:?}"
    );
    // Her old checkpoint still works under her old claims.
    try_pull(&mut as_blue, &json!({}), &checkpoint)
        .await
        .expect("same claims");

    // Within the new scope: the red documents (Fetch of her old ids answers only red ones, so
    // a reconciling client drops b1).
    let (red, _) = pull_all(&mut as_red, &json!({}), "").await;
    assert_eq!(ids(&red), ["b2", "r1"]);
    let fetched = as_red
        .fetch(FetchRequest {
            collection: "projects".into(),
            ids: vec!["b1".into(), "b2".into()],
            selector: Vec::new(),
        })
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(ids(&fetched.documents), ["b2"]);
}

#[tokio::test]
async fn either_allows_own_documents_beside_the_teams() {
    let server = server("either").await;
    let mut frank = client(&server, token("frank", json!({}), false)).await;
    let mut gina = client(&server, token("gina", json!({"team": "blue"}), false)).await;
    let mut hal = client(&server, token("hal", json!({"team": "red"}), false)).await;
    // Frank has no team: his own documents, in any shape.
    try_push(
        &mut frank,
        vec![insert(doc("f1", json!({"note": "mine"})))],
        0,
    )
    .await
    .expect("own document without a team");
    try_push(&mut gina, vec![insert(project("b1", "blue", "team"))], 0)
        .await
        .expect("gina");
    try_push(&mut hal, vec![insert(project("r1", "red", "team"))], 0)
        .await
        .expect("hal");
    let (own, _) = pull_all(&mut frank, &json!({}), "").await;
    assert_eq!(ids(&own), ["f1"]);
    let (blue, checkpoint) = pull_all(&mut gina, &json!({}), "").await;
    assert_eq!(ids(&blue), ["b1"]);
    // Gina's own document moved to red stays hers (owner rule) and stays in her scope; a
    // red teammate now sees it too.
    replace(&server, &mut gina, project("b1", "red", "moved"))
        .await
        .expect("an owner writes her own document anywhere");
    let (again, _) = pull_all(&mut gina, &json!({}), &checkpoint).await;
    assert_eq!(ids(&again), ["b1"]);
    assert!(!again[0].deleted, "still hers: {:?}", again[0]);
    let (red, _) = pull_all(&mut hal, &json!({}), "").await;
    assert_eq!(ids(&red), ["b1", "r1"]);
    // Hal may write it by the team rule; Frank may not touch it at all.
    replace(&server, &mut hal, project("b1", "red", "hal's"))
        .await
        .expect("team write");
    let err = replace(&server, &mut frank, doc("b1", json!({"note": "x"})))
        .await
        .expect_err("neither owner nor team");
    assert_eq!(err.code(), Code::PermissionDenied);
    let (still, _) = pull_all(&mut frank, &json!({}), "").await;
    assert_eq!(ids(&still), ["f1"]);
}

/// The README's *Access rules* configuration block loads as written, with the rules it says.
#[test]
fn the_readme_access_rules_block_loads() {
    let readme = include_str!("../../README.md");
    let marker = readme
        .find("<!-- ci: access-rules")
        .expect("the README marks its access rules block");
    let after = &readme[marker..];
    let start = after.find("```toml\n").expect("a toml block follows") + "```toml\n".len();
    let block = &after[start..start + after[start..].find("```").expect("the block ends")];
    let config = Config::from_toml(&format!("[auth]\nmode = \"none\"\n{block}"))
        .expect("the README block parses");
    let collections =
        syncline::protocol::Collections::from_config(&config).expect("the README block loads");
    let projects = collections.get("projects").expect("declared");
    assert_eq!(
        projects.access.access,
        syncline::protocol::selector::Access::Claims
    );
    let team = json!({"team": "blue"});
    let rule = projects.access.read.as_ref().expect("read_filter");
    let bound = rule.bind_claims(&team).expect("binds");
    assert!(bound.matches(&json!({"team": "blue"})) && !bound.matches(&json!({"team": "red"})));
}

/// Attachments follow the read rule: a teammate downloads (and may reference) a blob its
/// team's documents reference, whoever uploaded it; the other team gets NOT_FOUND, exactly as
/// for a blob that does not exist, and may not reference it.
#[tokio::test]
async fn attachments_follow_the_team_rule() {
    use crate::attachments::{blobs_client, digest, download, missing, random_bytes, upload};
    let server = server("claims").await;
    let (alice_token, bob_token, carol_token) = (
        token("alice", json!({"team": "blue"}), false),
        token("bob", json!({"team": "blue"}), false),
        token("carol", json!({"team": "red"}), false),
    );
    let mut blobs = blobs_client(&server).await;
    let bytes = random_bytes(100_000);
    let d = digest(&bytes);
    upload(&mut blobs, Some(&alice_token), "projects", &bytes)
        .await
        .expect("alice uploads");
    let mut alice = client(&server, alice_token).await;
    let attached = |title: &str, team: &str| {
        let mut body = crate::attachments::with_attachment("photo.png", &d, bytes.len());
        body["title"] = json!(title);
        body["team"] = json!(team);
        body["done"] = json!(false);
        doc("b1", body)
    };
    try_push(&mut alice, vec![insert(attached("plan", "blue"))], 0)
        .await
        .expect("alice attaches");

    let got = download(&mut blobs, Some(&bob_token), "projects", &d, 0, 0)
        .await
        .expect("a teammate downloads");
    assert_eq!(got, bytes);
    assert!(
        missing(&mut blobs, Some(&bob_token), "projects", &[&d])
            .await
            .expect("missing")
            .is_empty(),
        "held for the team"
    );
    let mut bob = client(&server, bob_token).await;
    replace(&server, &mut bob, attached("plan v2", "blue"))
        .await
        .expect("a teammate edits a document keeping its attachment");

    let err = download(&mut blobs, Some(&carol_token), "projects", &d, 0, 0)
        .await
        .expect_err("the other team");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(
        missing(&mut blobs, Some(&carol_token), "projects", &[&d])
            .await
            .expect("missing"),
        std::slice::from_ref(&d)
    );
    let mut carol = client(&server, carol_token).await;
    let mut body = crate::attachments::with_attachment("photo.png", &d, bytes.len());
    body["team"] = json!("red");
    body["done"] = json!(false);
    let err = try_push(&mut carol, vec![insert(doc("r1", body))], 0)
        .await
        .expect_err("referencing a blob she cannot read");
    assert_eq!(reason(&err), "INVALID_DOCUMENT", "{err:?}");
    assert!(err.message().contains("no blob"), "{}", err.message());
}

/// A reader of the race: its token's team, its own selector, and the rule both state.
struct RaceReader {
    team: Option<&'static str>,
    selector: Value,
    open_only: bool,
}

impl RaceReader {
    fn may_hold(&self, body: &Value) -> bool {
        self.team.is_some_and(|t| body["team"] == json!(t))
            && (!self.open_only || body["done"] == json!(false))
    }
}

fn race_body(rng: &mut rand::rngs::StdRng, team: Option<&str>) -> Value {
    use rand::Rng;
    let teams = ["blue", "red", "green"];
    json!({
        "team": team.unwrap_or(teams[rng.random_range(0..teams.len())]),
        "done": rng.random_bool(0.5),
        "title": format!("t{}", rng.random_range(0..1000)),
    })
}

/// A reader's copy: what it was sent, removals applied; every document sent must be inside
/// its rule, and every removal must name an id some written state of which was.
#[derive(Default)]
struct RaceCopy {
    token: String,
    docs: std::collections::BTreeMap<String, Value>,
}

impl RaceCopy {
    fn apply(
        &mut self,
        page: &[Document],
        reader: &RaceReader,
        written: &std::sync::Mutex<Vec<(String, Value)>>,
        seed: u64,
    ) {
        for d in page {
            if d.deleted {
                let named = written
                    .lock()
                    .expect("written")
                    .iter()
                    .any(|(id, b)| *id == d.id && reader.may_hold(b));
                assert!(
                    named,
                    "seed {seed}: {:?} {}: a removal names {}, never in its scope",
                    reader.team, reader.selector, d.id
                );
                self.docs.remove(&d.id);
            } else {
                let b = body(d);
                assert!(
                    reader.may_hold(&b),
                    "seed {seed}: {:?} {}: sent a document outside its rule: {b}",
                    reader.team,
                    reader.selector
                );
                self.docs.insert(d.id.clone(), b);
            }
        }
    }
}

/// Writers (services moving documents between teams, team members editing their team's
/// documents) race readers of every team, with and without a selector, pulling small pages and
/// streaming: no reader is ever sent a document outside its rule or a removal of an id never
/// in its scope, and at the end each holds exactly its team's matching documents.
#[tokio::test]
async fn a_seeded_race_of_teams_ends_exact_and_never_leaks() {
    use rand::{Rng, SeedableRng};
    use std::sync::{Arc, Mutex};
    let server = server("claims").await;
    let seed: u64 = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7ea5);
    const DOCS: usize = 40;
    const ROUNDS: usize = 40;
    let written: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ops = client(&server, token("ops", json!({}), true)).await;
    let seeded: Vec<(String, Value)> = (0..DOCS)
        .map(|i| (format!("d{i:03}"), race_body(&mut rng, None)))
        .collect();
    written.lock().expect("written").extend(seeded.clone());
    let rows = seeded
        .iter()
        .map(|(id, b)| insert(doc(id, b.clone())))
        .collect();
    assert!(try_push(&mut ops, rows, 0).await.expect("seed").is_empty());

    // Two services move documents anywhere; one member per team edits its team's documents.
    let writer_teams = [None, None, Some("blue"), Some("red")];
    let mut writers = Vec::new();
    for (w, team) in writer_teams.into_iter().enumerate() {
        let claims = team.map_or(json!({}), |t| json!({"team": t}));
        let mut c = client(&server, token(&format!("w{w}"), claims, team.is_none())).await;
        let written = written.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (w as u64 + 1));
            for _ in 0..ROUNDS {
                let (docs, _) = pull_all(&mut c, &json!({}), "").await;
                let live: Vec<&Document> = docs.iter().filter(|d| !d.deleted).collect();
                if live.is_empty() {
                    continue;
                }
                let assumed = live[rng.random_range(0..live.len())].clone();
                let new = race_body(&mut rng, team);
                let row = update(doc(&assumed.id, new.clone()), assumed.clone());
                // Recorded before the push (a reader may hear of it before the push returns),
                // withdrawn when it was not written. Conflicts are fine: another writer got
                // there first.
                let entry = (assumed.id.clone(), new);
                written.lock().expect("written").push(entry.clone());
                let applied = try_push(&mut c, vec![row], 0)
                    .await
                    .is_ok_and(|conflicts| conflicts.is_empty());
                if !applied {
                    let mut w = written.lock().expect("written");
                    if let Some(at) = w.iter().rposition(|e| *e == entry) {
                        w.remove(at);
                    }
                }
            }
        }));
    }

    let readers: Arc<Vec<RaceReader>> = Arc::new(
        [Some("blue"), Some("red"), Some("green"), None]
            .into_iter()
            .flat_map(|team| {
                [
                    RaceReader {
                        team,
                        selector: json!({}),
                        open_only: false,
                    },
                    RaceReader {
                        team,
                        selector: json!({"done": false}),
                        open_only: true,
                    },
                ]
            })
            .collect(),
    );
    let reader_client = |r: &RaceReader| {
        token(
            "reader",
            r.team.map_or(json!({}), |t| json!({"team": t})),
            false,
        )
    };
    let mut streams = Vec::new();
    for i in 0..readers.len() {
        let mut c = client(&server, reader_client(&readers[i])).await;
        let mut stream = c
            .subscribe(SubscribeRequest {
                collection: "projects".into(),
                checkpoint: None,
                selector: if readers[i].open_only {
                    readers[i].selector.to_string().into_bytes()
                } else {
                    Vec::new()
                },
            })
            .await
            .expect("subscribe")
            .into_inner();
        let copy = Arc::new(Mutex::new(RaceCopy::default()));
        let (into, readers, written) = (copy.clone(), readers.clone(), written.clone());
        let task = tokio::spawn(async move {
            while let Ok(Some(msg)) = stream.message().await {
                if let Some(subscribe_response::Event::Changes(batch)) = msg.event {
                    into.lock()
                        .expect("copy")
                        .apply(&batch.documents, &readers[i], &written, seed);
                }
            }
        });
        streams.push((copy, task, c));
    }
    let mut pullers = Vec::new();
    for r in readers.iter() {
        pullers.push((client(&server, reader_client(r)).await, RaceCopy::default()));
    }
    let mut reader_rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xabc);
    while !writers.iter().all(|w| w.is_finished()) {
        let i = reader_rng.random_range(0..readers.len());
        let (c, copy) = &mut pullers[i];
        let token = copy.token.clone();
        let (page, next) = try_pull(c, &readers[i].selector, &token)
            .await
            .expect("pull");
        copy.apply(&page, &readers[i], &written, seed);
        if !page.is_empty() {
            copy.token = next;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for w in writers {
        w.await.expect("writer");
    }
    let (all, _) = pull_all(&mut ops, &json!({}), "").await;
    let expected = |r: &RaceReader| -> std::collections::BTreeMap<String, Value> {
        all.iter()
            .filter(|d| !d.deleted)
            .map(|d| (d.id.clone(), body(d)))
            .filter(|(_, b)| r.may_hold(b))
            .collect()
    };
    for (i, (c, copy)) in pullers.iter_mut().enumerate() {
        let (rest, _) = pull_all(c, &readers[i].selector, &copy.token).await;
        copy.apply(&rest, &readers[i], &written, seed);
        assert_eq!(
            copy.docs,
            expected(&readers[i]),
            "seed {seed}: {:?} {}: the puller's copy differs",
            readers[i].team,
            readers[i].selector
        );
    }
    for (i, (copy, task, _)) in streams.iter().enumerate() {
        let want = expected(&readers[i]);
        let mut same = false;
        for _ in 0..300 {
            if copy.lock().expect("copy").docs == want {
                same = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            same,
            "seed {seed}: {:?} {}: the stream's copy differs",
            readers[i].team, readers[i].selector
        );
        task.abort();
    }
}
