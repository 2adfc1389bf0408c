//! A short smoke pass of every fuzz target (`pgwarden::fuzzing`), on stable, as part
//! of `cargo test`: first each target's seeds (for the SQL targets, every statement of
//! the tenant guard corpora), then mutations of them from a fixed-seed generator, for
//! a bounded number of inputs or a few seconds, whichever comes first. The deep,
//! coverage-guided runs are `fuzz/` (cargo-fuzz, see its README).
//!
//! A target fails by panicking: a crash, or a property it checks (for the rewriter:
//! whatever it lets run carries the tenant predicate on every scoped reference).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgwarden::fuzzing;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Per target: stop after this many generated inputs, or after `BUDGET`.
const MAX_INPUTS: usize = 200_000;
const BUDGET: Duration = Duration::from_secs(8);

/// Runs `target` on every seed, then on mutations of the seeds; returns the inputs run.
fn run(name: &str, seeds: &[Vec<u8>], target: impl Fn(&[u8])) -> usize {
    for seed in seeds {
        target(seed);
    }
    let mut rng = StdRng::seed_from_u64(0x5eed_f022);
    let started = Instant::now();
    let mut inputs = 0;
    while inputs < MAX_INPUTS && started.elapsed() < BUDGET {
        let input = mutate(&mut rng, seeds);
        target(&input);
        inputs += 1;
    }
    println!("{name}: {} seeds, {inputs} mutated inputs", seeds.len());
    inputs + seeds.len()
}

/// A seed with a few random edits: byte flips, insertions, deletions, truncation,
/// a splice with another seed, or a run of random bytes.
fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut input = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(1..5) {
        let len = input.len();
        match rng.random_range(0..6) {
            0 if len > 0 => {
                let at = rng.random_range(0..len);
                input[at] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let at = rng.random_range(0..=len);
                input.insert(at, rng.random());
            }
            2 if len > 0 => {
                input.remove(rng.random_range(0..len));
            }
            3 if len > 0 => input.truncate(rng.random_range(0..len)),
            4 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                let from = rng.random_range(0..=other.len());
                input.extend_from_slice(&other[from..]);
            }
            _ => {
                let at = rng.random_range(0..=len);
                let noise: Vec<u8> = (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
                input.splice(at..at, noise);
            }
        }
    }
    input
}

/// Every statement of the tenant guard corpora, as written there.
fn corpus_statements() -> Vec<String> {
    let mut statements = Vec::new();
    for file in ["tests/tenancy/adversarial.txt", "tests/tenancy/legit.txt"] {
        let text = std::fs::read_to_string(file).expect("read a tenant guard corpus");
        for entry in text.split("\n----\n") {
            let sql = entry.split("-- data:").next().unwrap_or_default();
            if sql
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim().starts_with("--"))
            {
                statements.push(sql.to_string());
            }
        }
    }
    assert!(
        statements.len() > 300,
        "the corpora hold {}",
        statements.len()
    );
    statements
}

fn client_frames() -> Vec<Vec<u8>> {
    use postgres_protocol::message::frontend;
    let mut one = BytesMut::new();
    frontend::parse("s1", "SELECT $1::int", [23], &mut one).unwrap();
    frontend::bind(
        "p1",
        "s1",
        [1],
        [Some(7i32)],
        |v, buf| {
            buf.extend_from_slice(&v.unwrap().to_be_bytes());
            Ok(postgres_protocol::IsNull::No)
        },
        [1],
        &mut one,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::describe(b'P', "p1", &mut one).unwrap();
    frontend::execute("p1", 0, &mut one).unwrap();
    frontend::close(b'S', "s1", &mut one).unwrap();
    frontend::sync(&mut one);
    let mut simple = BytesMut::new();
    frontend::query("SELECT 1; SELECT 2", &mut simple).unwrap();
    frontend::flush(&mut simple);
    vec![one.to_vec(), simple.to_vec(), b"X\0\0\0\x04".to_vec()]
}

fn startup_packets() -> Vec<Vec<u8>> {
    use postgres_protocol::message::frontend;
    let mut startup = BytesMut::new();
    frontend::startup_message(
        [
            ("user", "app"),
            ("database", "app"),
            ("options", "-c search_path=a\\ b -c pgwarden.tenant_id=1"),
        ],
        &mut startup,
    )
    .unwrap();
    let mut ssl = BytesMut::new();
    frontend::ssl_request(&mut ssl);
    let mut cancel = BytesMut::new();
    frontend::cancel_request(42, 7, &mut cancel);
    let mut both = ssl.to_vec();
    both.extend_from_slice(&startup);
    vec![
        startup.to_vec(),
        ssl.to_vec(),
        cancel.to_vec(),
        both,
        b"n,,n=,r=rOprNGfwEbeRWgbNEkqO\0c=biws,r=rOprNGfwEbeRWgbNEkqOserver,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=".to_vec(),
    ]
}

#[test]
fn frame_decoder_smoke() {
    let ran = run("frame_decoder", &client_frames(), fuzzing::frame_decoder);
    assert!(ran > 1_000);
}

#[test]
fn startup_exchange_smoke() {
    let ran = run(
        "startup_exchange",
        &startup_packets(),
        fuzzing::startup_exchange,
    );
    assert!(ran > 1_000);
}

#[test]
fn statement_classifier_smoke() {
    let seeds: Vec<Vec<u8>> = corpus_statements()
        .into_iter()
        .map(String::into_bytes)
        .collect();
    let ran = run(
        "statement_classifier",
        &seeds,
        fuzzing::statement_classifier,
    );
    assert!(ran > 1_000);
}

/// Every corpus statement, and then grammar-built statements, through the rewriter
/// with the enforce-mode check of its output.
#[test]
fn tenant_rewriter_smoke() {
    let mut outcomes = std::collections::HashMap::new();
    for sql in corpus_statements() {
        *outcomes
            .entry(fuzzing::rewrite_and_check(&sql))
            .or_insert(0) += 1;
    }
    println!("corpus statements: {outcomes:?}");
    let mut rng = StdRng::seed_from_u64(0x7e4a47);
    let seeds: Vec<Vec<u8>> = (0..64)
        .map(|_| (0..48).map(|_| rng.random()).collect())
        .collect();
    let generated = std::cell::RefCell::new(std::collections::HashMap::new());
    run("tenant_rewriter", &seeds, |data| {
        *generated
            .borrow_mut()
            .entry(fuzzing::tenant_rewriter(data))
            .or_insert(0) += 1;
    });
    let generated = generated.into_inner();
    println!("grammar-built statements: {generated:?}");
    // The grammar must reach the rewriter, not only the parser's error path.
    assert!(
        generated
            .get(&fuzzing::RewriteOutcome::Rewritten)
            .copied()
            .unwrap_or(0)
            > 100
    );
}
