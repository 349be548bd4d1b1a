//! Who owns which partition, read from the consumer group's own metadata (each member's
//! `client.id` carries its advertised URL, its assignment lists its partitions), and the
//! forwarding of queries to that owner (docs/cluster.md, "Queries").

use super::ingest::client_config;
use crate::config::{ClusterSettings, KafkaSettings};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The header a forwarded query carries: the process that gets it answers from what it holds,
/// and never forwards it again.
pub const FORWARDED: &str = "tally-forwarded";

/// How long a reading of the group's members is used before it is read again.
const FRESH: Duration = Duration::from_secs(1);

/// Partition → advertised URL of its owner, as last read.
type Map = BTreeMap<u32, String>;

pub struct Owners {
    client: Option<Arc<AdminClient<DefaultClientContext>>>,
    group: String,
    topic: String,
    client_id_prefix: String,
    pub own_url: Option<String>,
    pub timeout: Duration,
    cache: Mutex<Option<(Instant, Arc<Map>)>>,
}

impl Owners {
    pub fn new(k: &KafkaSettings, c: &ClusterSettings) -> anyhow::Result<Owners> {
        let client = if k.enabled() {
            Some(Arc::new(
                client_config(k, &format!("{}-owners", k.client_id))
                    .create()
                    .map_err(|e| anyhow::anyhow!("cannot create the group reader: {e}"))?,
            ))
        } else {
            None
        };
        Ok(Owners {
            client,
            group: c.group_id.clone(),
            topic: c.events_topic.clone(),
            client_id_prefix: format!("{} ", k.client_id),
            own_url: c.advertise_url.clone(),
            timeout: c.forward_timeout,
            cache: Mutex::new(None),
        })
    }

    /// The owners of every assigned partition (read again when older than a second).
    pub async fn map(&self) -> Result<Arc<Map>, String> {
        if let Some((at, map)) = &*self.cache.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < FRESH {
                return Ok(map.clone());
            }
        }
        let Some(client) = self.client.clone() else {
            return Err("no brokers configured".into());
        };
        let (group, topic, prefix) = (
            self.group.clone(),
            self.topic.clone(),
            self.client_id_prefix.clone(),
        );
        let members = tokio::task::spawn_blocking(move || {
            let list = client
                .inner()
                .fetch_group_list(Some(&group), Duration::from_secs(3))
                .map_err(|e| format!("cannot read the consumer group: {e}"))?;
            let mut members = Vec::new();
            for g in list.groups().iter().filter(|g| g.name() == group) {
                for m in g.members() {
                    let Some(url) = member_url(m.client_id(), m.id(), &prefix) else {
                        continue;
                    };
                    let parts = m.assignment().map(|a| assigned(a, &topic));
                    members.push((url, parts.unwrap_or_default()));
                }
            }
            Ok::<_, String>(members)
        })
        .await
        .map_err(|e| format!("group reader task: {e}"))??;
        let mut map = Map::new();
        for (url, parts) in members {
            // A broker that leaves the assignment out of its group description: the member
            // says which partitions it holds (its /healthz/details).
            let parts = if parts.is_empty() {
                self.ask_member(&url).await.unwrap_or_default()
            } else {
                parts
            };
            for p in parts {
                map.insert(p, url.clone());
            }
        }
        let map = Arc::new(map);
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), map.clone()));
        Ok(map)
    }

    /// The partitions a member says it owns (restoring or live).
    async fn ask_member(&self, url: &str) -> Result<Vec<u32>, String> {
        let mut resp = awc::Client::new()
            .get(format!("{}/healthz/details", url.trim_end_matches('/')))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value = resp
            .json()
            .limit(1 << 20)
            .await
            .map_err(|e| e.to_string())?;
        Ok(body["cluster"]["owned"]
            .as_object()
            .map(|o| o.keys().filter_map(|k| k.parse().ok()).collect())
            .unwrap_or_default())
    }

    /// The advertised URL of partition `p`'s owner, if it has one now.
    pub async fn owner_of(&self, p: u32) -> Result<Option<String>, String> {
        Ok(self.map().await?.get(&p).cloned())
    }
}

/// A member's advertised URL: its `client.id` after tally's prefix, or, from a broker that
/// leaves `client.id` out of its group description, its member id, which Kafka makes of the
/// `client.id`, a dash and a 36-character UUID.
pub fn member_url(client_id: &str, member_id: &str, prefix: &str) -> Option<String> {
    if let Some(url) = client_id.strip_prefix(prefix) {
        return Some(url.to_owned());
    }
    let rest = member_id.strip_prefix(prefix)?;
    let cut = rest.len().checked_sub(37)?;
    let (url, uuid) = (rest.get(..cut)?, rest.get(cut..)?);
    (uuid.starts_with('-') && !url.is_empty()).then(|| url.to_owned())
}

/// The partitions of `topic` in a member's assignment (Kafka's consumer protocol:
/// `version: i16`, then `[topic: string, partitions: [i32]]`, then user data, which is ignored).
pub fn assigned(bytes: &[u8], topic: &str) -> Vec<u32> {
    let mut r = Reader { bytes, at: 0 };
    let mut out = Vec::new();
    let parse = |r: &mut Reader, out: &mut Vec<u32>| -> Option<()> {
        r.take(2)?;
        let topics = r.i32()?;
        for _ in 0..topics.max(0) {
            let len = i16::from_be_bytes(r.take(2)?.try_into().ok()?);
            let name = r.take(len.max(0) as usize)?;
            let n = r.i32()?;
            for _ in 0..n.max(0) {
                let p = r.i32()?;
                if name == topic.as_bytes() && p >= 0 {
                    out.push(p as u32);
                }
            }
        }
        Some(())
    };
    let _ = parse(&mut r, &mut out);
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = vec![0, 1];
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes()); // no user data
        b
    }

    #[test]
    fn a_members_url_comes_from_its_client_id_else_its_member_id() {
        let p = "tally ";
        assert_eq!(
            member_url("tally http://10.0.0.1:8080", "x", p).as_deref(),
            Some("http://10.0.0.1:8080")
        );
        assert_eq!(
            member_url(
                "",
                "tally http://127.0.0.1:18082-c69cc034-2d79-4d47-a77c-7cc39535545a",
                p
            )
            .as_deref(),
            Some("http://127.0.0.1:18082")
        );
        assert_eq!(
            member_url("", "other-c69cc034-2d79-4d47-a77c-7cc39535545a", p),
            None
        );
        assert_eq!(member_url("", "tally -short", p), None);
    }

    #[test]
    fn a_members_assignment_gives_its_partitions_of_the_events_topic_only() {
        let b = assignment(&[("other", &[0, 1]), ("tally.events", &[3, 7, 30])]);
        assert_eq!(assigned(&b, "tally.events"), vec![3, 7, 30]);
        assert_eq!(assigned(&b, "missing"), Vec::<u32>::new());
        // Cut anywhere, it yields what it could read and never panics.
        for cut in 0..b.len() {
            let _ = assigned(&b[..cut], "tally.events");
        }
    }
}
