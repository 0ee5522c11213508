//! Gradient averaging between the nodes of a run over several nodes, over TCP.
//!
//! Every replica of the run (each device of each node) connects to one hub, which node 0
//! serves at `--master HOST:PORT`. Each step, every replica sends its flattened gradients and
//! loss values; the hub adds them in rank order, divides by the number of replicas and sends
//! the mean back to all. The fixed order makes a run bit-identical to the same replicas in one
//! process, and runs repeatable.
//!
//! Why not burn-collective's multi-node all-reduce: in burn 0.21 it completes one all-reduce
//! per process and then hangs (its node `SyncService` clears a copy of its list of synced
//! peers, not the list, so the second sync never sees a complete set); see
//! `examples/two_node_all_reduce.rs`. One hub is a star, not a ring: each step moves
//! `2 x parameters x 4` bytes per replica through node 0 (24 MB for nano), fine for a few
//! nodes on a cluster network; a ring would scale further.
//!
//! Wire format, little-endian: a hello `b"PCPT", version u32, rank u32, world u32, start step
//! u64`, answered by one status byte (0 = accepted) and, when refused, a UTF-8 reason; then per
//! step a `u64` element count and that many `f32`s each way.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::TrainError;

const MAGIC: &[u8; 4] = b"PCPT";
const VERSION: u32 = 1;
/// How long a replica keeps trying to reach the hub (node 0 may start later).
const CONNECT_PATIENCE: Duration = Duration::from_secs(120);
/// How long a step may wait for the slowest replica before the run gives up.
const STEP_PATIENCE: Duration = Duration::from_secs(1800);

fn io_error(what: &str, address: &str, e: std::io::Error) -> TrainError {
    TrainError::Device(format!("gradient hub at {address}: {what}: {e}"))
}

/// One replica's connection to the hub.
pub struct HubClient {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    address: String,
}

impl HubClient {
    /// Connects replica `rank` of `world` to the hub at `address`, retrying for two minutes,
    /// and introduces itself; the hub refuses a rank it already has, another world size or
    /// another start step (nodes resuming from different checkpoints).
    pub fn connect(
        address: &str,
        rank: usize,
        world: usize,
        start_step: usize,
    ) -> Result<HubClient, TrainError> {
        let deadline = Instant::now() + CONNECT_PATIENCE;
        let stream = loop {
            let attempt = address
                .to_socket_addrs()
                .and_then(|mut a| {
                    a.next()
                        .ok_or_else(|| std::io::Error::other("no address for that name"))
                })
                .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)));
            match attempt {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(io_error(
                        "cannot connect (is node 0 running with the same --master?)",
                        address,
                        e,
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        stream
            .set_nodelay(true)
            .and_then(|_| stream.set_read_timeout(Some(STEP_PATIENCE)))
            .map_err(|e| io_error("configuring the connection", address, e))?;
        let mut hello = Vec::with_capacity(24);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&VERSION.to_le_bytes());
        hello.extend_from_slice(&(rank as u32).to_le_bytes());
        hello.extend_from_slice(&(world as u32).to_le_bytes());
        hello.extend_from_slice(&(start_step as u64).to_le_bytes());
        let read_half = stream
            .try_clone()
            .map_err(|e| io_error("cloning the connection", address, e))?;
        let mut client = HubClient {
            reader: BufReader::new(read_half),
            writer: BufWriter::new(stream),
            address: address.to_string(),
        };
        client
            .writer
            .write_all(&hello)
            .and_then(|_| client.writer.flush())
            .map_err(|e| io_error("sending the hello", address, e))?;
        let mut status = [0u8; 1];
        client
            .reader
            .read_exact(&mut status)
            .map_err(|e| io_error("reading the hub's answer", address, e))?;
        if status[0] != 0 {
            let mut reason = String::new();
            let _ = client.reader.read_to_string(&mut reason);
            return Err(TrainError::Invalid(format!(
                "gradient hub at {address} refused replica {rank}: {reason}"
            )));
        }
        Ok(client)
    }

    /// Replaces `values` by their mean over all replicas (every replica calls this once per
    /// step with a vector of the same length).
    pub fn all_reduce_mean(&mut self, values: &mut [f32]) -> Result<(), TrainError> {
        let address = self.address.clone();
        write_vector(&mut self.writer, values)
            .map_err(|e| io_error("sending gradients", &address, e))?;
        let mean = read_vector(&mut self.reader)
            .map_err(|e| io_error("receiving the mean (did a node stop?)", &address, e))?;
        if mean.len() != values.len() {
            return Err(TrainError::Device(format!(
                "gradient hub at {address}: sent {} values back for {}",
                mean.len(),
                values.len()
            )));
        }
        values.copy_from_slice(&mean);
        Ok(())
    }
}

fn write_vector(w: &mut impl Write, values: &[f32]) -> std::io::Result<()> {
    w.write_all(&(values.len() as u64).to_le_bytes())?;
    for chunk in values.chunks(16 * 1024) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_all(&bytes)?;
    }
    w.flush()
}

/// `None` when the peer closed the connection cleanly before a new vector.
fn read_vector_or_end(r: &mut impl Read) -> std::io::Result<Option<Vec<f32>>> {
    let mut len = [0u8; 8];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u64::from_le_bytes(len) as usize;
    let mut bytes = vec![0u8; n * 4];
    r.read_exact(&mut bytes)?;
    Ok(Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    ))
}

fn read_vector(r: &mut impl Read) -> std::io::Result<Vec<f32>> {
    read_vector_or_end(r)?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"))
}

/// The hub, on node 0: a thread that averages every step's vectors until the replicas
/// disconnect.
pub struct GradientHub {
    thread: Option<JoinHandle<Result<(), TrainError>>>,
}

impl GradientHub {
    /// Listens on `address`'s port (every interface) for the `world` replicas of a run that
    /// starts at `start_step`.
    pub fn start(
        address: &str,
        world: usize,
        start_step: usize,
    ) -> Result<GradientHub, TrainError> {
        let port = address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| TrainError::Invalid(format!("--master {address:?}: give HOST:PORT")))?;
        let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
            TrainError::Invalid(format!(
                "--master {address}: node 0 cannot listen on port {port} ({e}); give a free port"
            ))
        })?;
        let address = address.to_string();
        let thread = std::thread::Builder::new()
            .name("percept-gradient-hub".into())
            .spawn(move || serve(listener, world, start_step, &address))
            .map_err(|e| TrainError::Device(format!("starting the gradient hub: {e}")))?;
        Ok(GradientHub {
            thread: Some(thread),
        })
    }

    /// Waits for the hub to end (every replica disconnected) and returns its error, if any.
    pub fn finish(mut self) -> Result<(), TrainError> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(TrainError::Device("the gradient hub panicked".into())),
            None => Ok(()),
        }
    }
}

/// Accepts the replicas, then averages vectors in rank order until they disconnect.
fn serve(
    listener: TcpListener,
    world: usize,
    start_step: usize,
    address: &str,
) -> Result<(), TrainError> {
    let mut peers: Vec<Option<(BufReader<TcpStream>, BufWriter<TcpStream>)>> =
        (0..world).map(|_| None).collect();
    while peers.iter().any(Option::is_none) {
        let (stream, from) = listener
            .accept()
            .map_err(|e| io_error("accepting a replica", address, e))?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(STEP_PATIENCE));
        let mut reader = BufReader::new(
            stream
                .try_clone()
                .map_err(|e| io_error("cloning a connection", address, e))?,
        );
        let mut writer = BufWriter::new(stream);
        let mut hello = [0u8; 24];
        if reader.read_exact(&mut hello).is_err() || &hello[..4] != MAGIC {
            tracing::warn!("gradient hub: {from} is not a percept replica; ignored");
            continue;
        }
        let word = |i: usize| u32::from_le_bytes(hello[i..i + 4].try_into().unwrap());
        let (version, rank, their_world) = (word(4), word(8) as usize, word(12) as usize);
        let their_start = u64::from_le_bytes(hello[16..24].try_into().unwrap()) as usize;
        let refusal = if version != VERSION {
            Some(format!("protocol version {version}, the hub speaks {VERSION} (same percept build on every node)"))
        } else if their_world != world {
            Some(format!("it counts {their_world} replicas, node 0 counts {world} (same --nodes and number of devices on every node)"))
        } else if rank >= world || peers[rank].is_some() {
            Some(format!("rank {rank} is taken or out of range 0..{world} (each node a different --node-rank)"))
        } else if their_start != start_step {
            Some(format!("it starts at step {their_start}, node 0 at step {start_step} (resume every node from the same checkpoint step)"))
        } else {
            None
        };
        match refusal {
            Some(reason) => {
                tracing::warn!("gradient hub: refused {from}: {reason}");
                let _ = writer.write_all(&[1]);
                let _ = writer.write_all(reason.as_bytes());
                let _ = writer.flush();
            }
            None => {
                writer
                    .write_all(&[0])
                    .and_then(|_| writer.flush())
                    .map_err(|e| io_error("answering a replica", address, e))?;
                peers[rank] = Some((reader, writer));
            }
        }
    }
    let mut peers: Vec<_> = peers.into_iter().map(Option::unwrap).collect();
    loop {
        let mut sum: Option<Vec<f32>> = None;
        for (rank, (reader, _)) in peers.iter_mut().enumerate() {
            let vector = match read_vector_or_end(reader) {
                Ok(Some(v)) => v,
                // Every replica ends its connection after its last step.
                Ok(None) if rank == 0 || sum.is_none() => return Ok(()),
                Ok(None) => {
                    return Err(TrainError::Device(format!(
                        "gradient hub at {address}: replica {rank} left in the middle of a step"
                    )))
                }
                Err(e) => return Err(io_error(&format!("reading replica {rank}"), address, e)),
            };
            match &mut sum {
                None => sum = Some(vector),
                Some(s) if s.len() == vector.len() => {
                    s.iter_mut().zip(&vector).for_each(|(a, b)| *a += b);
                }
                Some(s) => {
                    return Err(TrainError::Device(format!(
                        "gradient hub at {address}: replica {rank} sent {} values, replica 0 {} \
                         (different models on the nodes?)",
                        vector.len(),
                        s.len()
                    )))
                }
            }
        }
        let mut mean = sum.expect("world >= 1");
        let scale = world as f32;
        mean.iter_mut().for_each(|v| *v /= scale);
        for (rank, (_, writer)) in peers.iter_mut().enumerate() {
            write_vector(writer, &mean).map_err(|e| {
                io_error(&format!("sending the mean to replica {rank}"), address, e)
            })?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_address() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
    }

    #[test]
    fn three_replicas_get_the_mean_in_rank_order() {
        let address: &'static str = free_address().leak();
        let hub = GradientHub::start(address, 3, 5).unwrap();
        let threads: Vec<_> = (0..3)
            .map(|rank| {
                std::thread::spawn(move || {
                    let mut client = HubClient::connect(address, rank, 3, 5).unwrap();
                    let mut results = Vec::new();
                    for step in 0..3 {
                        let mut v = vec![rank as f32 + step as f32, 1e8, 1.0 - rank as f32];
                        client.all_reduce_mean(&mut v).unwrap();
                        results.push(v);
                    }
                    results
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for r in &results {
            assert_eq!(r, &results[0]);
        }
        // Step 1: (1 + 2 + 3) / 3 = 2; 1e8 stays 1e8; (1 + 0 - 1) / 3 = 0.
        assert_eq!(results[0][1], vec![2.0, 1e8, 0.0]);
        assert_eq!(results[0][2], vec![3.0, 1e8, 0.0]);
        hub.finish().unwrap();
    }

    #[test]
    fn the_hub_refuses_a_mismatched_replica_naming_why() {
        let address = &free_address();
        let _hub = GradientHub::start(address, 2, 10).unwrap();
        let other_step = HubClient::connect(address, 0, 2, 12)
            .err()
            .unwrap()
            .to_string();
        assert!(
            other_step.contains("starts at step 12, node 0 at step 10"),
            "{other_step}"
        );
        let other_world = HubClient::connect(address, 1, 3, 10)
            .err()
            .unwrap()
            .to_string();
        assert!(other_world.contains("counts 3 replicas"), "{other_world}");
        let _first = HubClient::connect(address, 0, 2, 10).unwrap();
        let twice = HubClient::connect(address, 0, 2, 10)
            .err()
            .unwrap()
            .to_string();
        assert!(twice.contains("rank 0 is taken"), "{twice}");
    }
}
