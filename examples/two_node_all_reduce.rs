//! Does burn-collective's multi-node all-reduce work between processes on this machine?
//!
//! Starts burn-collective's global orchestrator and `NODES` node processes on loopback (each a
//! copy of this program), each node holding one CPU peer that all-reduces `[rank + 1; 4]`
//! (mean) in two rounds, and reports which rounds every node completed within 30 s.
//!
//! With burn 0.21 the first round completes and the second never does: the node's
//! `SyncService::sync` clears a copy of its list of synced peers instead of the list, so the
//! next sync never sees exactly one entry per node. That is why `percept train --nodes`
//! averages through its own gradient hub (`percept::train::gradient_hub`); this program is the
//! reproduction to take upstream, and the check to run again after a burn upgrade.
//!
//! ```sh
//! cargo run --release --example two_node_all_reduce            # orchestrator + 2 nodes
//! cargo run --release --example two_node_all_reduce -- 3       # orchestrator + 3 nodes
//! ```

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burn::backend::Flex;
use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::prelude::*;
use burn_communication::Address;

const ROUNDS: u32 = 2;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("orchestrator") => orchestrator(args[1].parse().expect("port")),
        Some("node") => {
            let n = |i: usize| args[i].parse::<u16>().expect("number");
            node(n(1), n(2), n(3), n(4))
        }
        other => {
            let nodes = other.map_or(2, |n| n.parse().expect("a node count"));
            if let Err(e) = launch(nodes) {
                eprintln!("two_node_all_reduce: {e}");
                std::process::exit(1);
            }
        }
    }
}

fn orchestrator(port: u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(collective::start_global_orchestrator(port));
}

fn node(rank: u16, nodes: u16, orchestrator_port: u16, data_port: u16) {
    let device = Default::default();
    let address = |port: u16| -> Address { format!("ws://127.0.0.1:{port}").parse().unwrap() };
    let config = CollectiveConfig::default()
        .with_num_devices(1)
        .with_num_nodes(u32::from(nodes))
        .with_global_address(address(orchestrator_port))
        .with_node_address(address(data_port))
        .with_data_service_port(data_port);
    let peer = PeerId::from(u32::from(rank));
    collective::register::<Flex>(peer, device, config).expect("registration");
    for round in 1..=ROUNDS {
        let mine = Tensor::<Flex, 1>::full([4], f32::from(rank) + 1.0, &device);
        let mean = collective::all_reduce::<Flex>(
            peer,
            mine.into_primitive().tensor(),
            ReduceOperation::Mean,
        )
        .expect("all-reduce");
        let mean = Tensor::<Flex, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(mean));
        println!(
            "rank {rank} round {round}: {:?}",
            mean.to_data().to_vec::<f32>().unwrap()
        );
    }
    collective::finish_collective::<Flex>(peer).expect("finish");
}

/// Runs the orchestrator and `nodes` nodes as child processes and checks their answers.
fn launch(nodes: u16) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let base = 20000 + (std::process::id() % 20000) as u16;
    let spawn = |args: Vec<String>| -> Result<Child, String> {
        Command::new(&exe)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {args:?}: {e}"))
    };
    let mut orchestrator = spawn(vec!["orchestrator".into(), base.to_string()])?;
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut children: Vec<Child> = (0..nodes)
        .map(|rank| {
            spawn(vec![
                "node".into(),
                rank.to_string(),
                nodes.to_string(),
                base.to_string(),
                (base + 1 + rank).to_string(),
            ])
        })
        .collect::<Result<_, _>>()?;
    let expected = (1..=nodes).map(f32::from).sum::<f32>() / f32::from(nodes);
    let deadline = started + Duration::from_secs(30);
    let mut failures = Vec::new();
    // Read every node's output as it comes: a full pipe would stall that node, and with it
    // the others.
    let readers: Vec<_> = children
        .iter_mut()
        .map(|child| {
            let mut stdout = child.stdout.take().expect("piped");
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
                text
            })
        })
        .collect();
    for (rank, (mut child, reader)) in children.into_iter().zip(readers).enumerate() {
        while child.try_wait().map_err(|e| e.to_string())?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let finished = child.try_wait().map_err(|e| e.to_string())?.is_some();
        if !finished {
            let _ = child.kill();
        }
        let _ = child.wait();
        // burn-communication logs to stdout too: keep the node's answers.
        let text = reader.join().unwrap_or_default();
        let answers: Vec<&str> = text.lines().filter(|l| l.starts_with("rank ")).collect();
        for round in 1..=ROUNDS {
            let want = format!("rank {rank} round {round}: {:?}", vec![expected; 4]);
            if answers.contains(&want.as_str()) {
                println!("{want}");
            } else {
                failures.push(format!(
                    "node {rank} did not complete round {round} in 30 s"
                ));
            }
        }
    }
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
    if failures.is_empty() {
        println!(
            "{nodes} nodes all-reduced to the mean {expected}, {ROUNDS} rounds, in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}
