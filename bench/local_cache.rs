//! The client crate's `LocalCache` against a server in its default configuration (the embedded
//! store): the time of a check answered from memory (`cached`, and the awaited `check`), the
//! same checks over the network (one call at a time on loopback, as a caller without the cache
//! makes them), and the memory each cached subject takes (resident memory of this process
//! before and after filling the cache, divided by the subjects).
//!
//! BENCH_ROUNDS (default 3) rounds of each measure, medians reported; BENCH_SUBJECTS (default
//! 50,000) subjects cached for the memory figure.
//!
//!     cargo bench --bench local_cache

#[path = "support.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use assent::proto::{self, Plan, Purpose, Source};
use assent_client::{AnswerFrom, CacheOptions, Client, LocalCache};
use support::{Server, env_number, median, seed_subjects};

/// Subjects that exist (free plan: training allowed), asked about in the timing rounds.
const SEEDED: usize = 1_000;

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kilobytes: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kilobytes * 1024
}

fn main() {
    let rounds = env_number("BENCH_ROUNDS", 3) as usize;
    let cached_subjects = env_number("BENCH_SUBJECTS", 50_000) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = Server::start(&[]);
    let channel = runtime.block_on(async { server.channels(1).await.remove(0) });
    runtime.block_on(seed_subjects(
        channel.clone(),
        "cached",
        SEEDED,
        &[Plan::Free],
    ));
    let client = Client::new(channel);
    let cache = runtime.block_on(async {
        let cache = LocalCache::start(client.clone(), CacheOptions::default());
        assert!(cache.wait_fresh(Duration::from_secs(10)).await);
        cache
    });
    let subject = |index: usize| format!("cached-{}", index % SEEDED);

    // Fill: every seeded subject once (the misses), then time hits on them.
    runtime.block_on(async {
        for index in 0..SEEDED {
            let answer = cache
                .check(
                    &subject(index),
                    Purpose::ModelTraining,
                    None,
                    Source::Conversation,
                )
                .await
                .unwrap();
            assert_eq!(answer.response.decision(), proto::Decision::Allow);
        }
    });
    let subjects: Vec<String> = (0..SEEDED).map(subject).collect();
    let per_round = 1_000_000;
    let mut cached_ns = Vec::new();
    let mut awaited_ns = Vec::new();
    let mut network_us = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        for index in 0..per_round {
            let answer = cache.cached(
                &subjects[index % SEEDED],
                Purpose::ModelTraining,
                None,
                Source::Conversation,
            );
            black_box(answer.expect("held"));
        }
        cached_ns.push(started.elapsed().as_nanos() as f64 / per_round as f64);

        let elapsed = runtime.block_on(async {
            let started = Instant::now();
            for index in 0..per_round {
                let answer = cache
                    .check(
                        &subjects[index % SEEDED],
                        Purpose::ModelTraining,
                        None,
                        Source::Conversation,
                    )
                    .await
                    .unwrap();
                debug_assert_eq!(answer.from, AnswerFrom::Memory);
                black_box(answer);
            }
            started.elapsed()
        });
        awaited_ns.push(elapsed.as_nanos() as f64 / per_round as f64);

        // The same checks over the network, one at a time: each call's own time, median.
        let mut calls = runtime.block_on(async {
            let mut calls = Vec::new();
            for index in 0..5_000 {
                let request = proto::CheckRequest {
                    subject_id: subjects[index % SEEDED].clone(),
                    purpose: Purpose::ModelTraining as i32,
                    ..Default::default()
                };
                let started = Instant::now();
                black_box(client.check(request).await.unwrap());
                calls.push(started.elapsed().as_secs_f64() * 1e6);
            }
            calls
        });
        network_us.push(median(std::mem::take(&mut calls)));
    }
    let stats = cache.stats();
    assert!(stats.hits >= (2 * per_round * rounds) as u64, "{stats:?}");

    // Memory: a cache of its own filled with `cached_subjects` subjects (unknown ones beyond
    // the seeded: an answer each, as for any subject), resident memory before and after.
    drop(cache);
    let (per_subject, filled) = runtime.block_on(async {
        let cache = LocalCache::start(
            client.clone(),
            CacheOptions {
                capacity: cached_subjects,
                ..CacheOptions::default()
            },
        );
        assert!(cache.wait_fresh(Duration::from_secs(10)).await);
        let before = resident_bytes();
        for index in 0..cached_subjects {
            let subject_id = format!("memory-subject-{index:08}");
            cache
                .check(
                    &subject_id,
                    Purpose::ModelTraining,
                    None,
                    Source::Conversation,
                )
                .await
                .unwrap();
        }
        let after = resident_bytes();
        let filled = cache.stats().subjects;
        (after.saturating_sub(before) as f64 / filled as f64, filled)
    });
    let cached = median(cached_ns);
    let awaited = median(awaited_ns);
    let network = median(network_us);
    println!(
        "LocalCache, default server configuration (embedded store), {rounds} rounds, medians:"
    );
    println!("  hit, cached():          {cached:>8.0} ns");
    println!("  hit, check().await:     {awaited:>8.0} ns");
    println!(
        "  Check over the network: {network:>8.1} µs (one call at a time, loopback; {:.0}× the awaited hit)",
        network * 1_000.0 / awaited
    );
    println!(
        "  memory per cached subject (one answer): {per_subject:.0} bytes ({filled} subjects)"
    );
    server.stop();
}
