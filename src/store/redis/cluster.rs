//! A cluster's nodes, from `CLUSTER NODES`, `SCAN` over every primary (or
//! the single node), and the events channel's subscribers on every node.

use std::time::Duration;

use redis::cluster_async::ClusterConnection;

use super::{connection::Conn, error::StoreError, store::Inner};

/// Every key matching `pattern`: `SCAN` on the single node, or on every
/// primary of a cluster.
pub(super) async fn scan(inner: &Inner, pattern: &str) -> Result<Vec<String>, StoreError> {
    match scan_reachable(inner, pattern).await {
        (found, None) => Ok(found),
        (_, Some(error)) => Err(error),
    }
}

/// [`scan`] on every node that answers, and the first error met on those
/// that do not.
pub(super) async fn scan_reachable(
    inner: &Inner,
    pattern: &str,
) -> (Vec<String>, Option<StoreError>) {
    let mut failed = None;
    let mut found = Vec::new();
    let nodes = match &inner.conn {
        Conn::Single(_) => vec![None],
        Conn::Cluster(cluster) => match cluster_primaries(inner, &mut cluster.clone()).await {
            Ok(nodes) => nodes.into_iter().map(Some).collect(),
            Err(error) => return (found, Some(error)),
        },
    };
    for node in nodes {
        match scan_node(inner, node, pattern).await {
            Ok(keys) => found.extend(keys),
            Err(error) => failed = failed.or(Some(error)),
        }
    }
    (found, failed)
}

/// [`scan`] on one node (`None`: the single node).
async fn scan_node(
    inner: &Inner,
    node: Option<(String, u16)>,
    pattern: &str,
) -> Result<Vec<String>, StoreError> {
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

    let mut found = Vec::new();
    let mut cursor = 0u64;
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500);
        let (next, keys): (u64, Vec<String>) = match (&node, &inner.conn) {
            (Some((host, port)), Conn::Cluster(cluster)) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let value = inner
                    .run(
                        None,
                        inner.settings.write_timeout,
                        cluster.clone().route_command(scan, routing),
                    )
                    .await?;
                redis::from_redis_value(value)
                    .map_err(|e| StoreError::from(redis::RedisError::from(e)))?
            }
            _ => {
                inner
                    .run(
                        None,
                        inner.settings.write_timeout,
                        scan.query_async(&mut inner.conn.clone()),
                    )
                    .await?
            }
        };
        found.extend(keys);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(found)
}

/// How many subscribers `channel` has over every node of a cluster (`PUBSUB
/// NUMSUB` counts only a node's own); nodes that do not answer count none.
pub(super) async fn subscribers(
    inner: &Inner,
    cluster: &mut ClusterConnection,
    channel: &str,
) -> Result<usize, StoreError> {
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

    let nodes: String = inner
        .run(
            None,
            inner.settings.write_timeout,
            redis::cmd("CLUSTER").arg("NODES").query_async(cluster),
        )
        .await?;
    let mut total = 0;
    for (host, port) in node_addresses(&nodes, false) {
        let mut numsub = redis::cmd("PUBSUB");
        numsub.arg("NUMSUB").arg(channel);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
        let Ok(value) = inner
            .run(
                None,
                inner.settings.write_timeout,
                cluster.clone().route_command(numsub, routing),
            )
            .await
        else {
            continue;
        };
        if let Ok((_, count)) = redis::from_redis_value::<(String, usize)>(value) {
            total += count;
        }
    }
    Ok(total)
}

/// The primaries of a cluster, from `CLUSTER NODES`.
async fn cluster_primaries(
    inner: &Inner,
    cluster: &mut ClusterConnection,
) -> Result<Vec<(String, u16)>, StoreError> {
    let nodes: String = inner
        .run(
            None,
            inner.settings.write_timeout,
            redis::cmd("CLUSTER").arg("NODES").query_async(cluster),
        )
        .await?;
    Ok(node_addresses(&nodes, true))
}

/// The addresses of the nodes a `CLUSTER NODES` reply lists as up: only
/// the primaries, or every node.
fn node_addresses(nodes: &str, primaries_only: bool) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if (primaries_only && !flags.contains("master")) || flags.contains("fail") {
                return None;
            }
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// Clients for the cluster's other nodes, made like the first seed (its
/// credentials and database), for the subscription to move to when every
/// seed is gone. Plain TCP seeds only; otherwise the seeds alone.
pub(super) async fn other_nodes(
    cluster: &mut ClusterConnection,
    seeds: &[redis::Client],
    timeout: Duration,
) -> Vec<redis::Client> {
    use redis::ConnectionAddr;

    let Some(first) = seeds.first().map(redis::Client::get_connection_info) else {
        return Vec::new();
    };
    if !matches!(first.addr(), ConnectionAddr::Tcp(..)) {
        return Vec::new();
    }
    let mut command = redis::cmd("CLUSTER");
    command.arg("NODES");
    let nodes = command.query_async::<String>(cluster);
    let Ok(Ok(nodes)) = tokio::time::timeout(timeout, nodes).await else {
        return Vec::new();
    };
    node_addresses(&nodes, false)
        .into_iter()
        .filter(|(host, port)| {
            !seeds.iter().any(|seed| {
                matches!(seed.get_connection_info().addr(),
                    ConnectionAddr::Tcp(h, p) if h == host && p == port)
            })
        })
        .filter_map(|(host, port)| {
            let info = first.clone().set_addr(ConnectionAddr::Tcp(host, port));
            redis::Client::open(info).ok()
        })
        .collect()
}
