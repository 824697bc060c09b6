//! Membership comes from the library's synced device rows: a row added lets a device in, a
//! row tombstoned shuts it out — on every device, as the row syncs. Seeds printed, replayable
//! with `SYNC_SEED`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use library_models as _;

mod common;

use std::time::Duration;

use common::Cluster;
use library_models::{Device, Id};
use sync_service::SyncState;
use txn_manager::Op;

const T: Duration = Duration::from_secs(20);

/// Whether device `i` shows device `j` among its peers as connected.
fn connected(c: &Cluster, i: usize, j: usize) -> bool {
    let id = c.devices[j].id;
    c.svc(i).status().peers.iter().any(|p| p.device == id && p.connected)
}

/// Whether device `i` lists device `j` as a member at all.
fn lists(c: &Cluster, i: usize, j: usize) -> bool {
    let id = c.devices[j].id;
    c.svc(i).status().peers.iter().any(|p| p.device == id)
}

async fn pair_everyone(c: &mut Cluster) {
    let rows: Vec<Op> = (0..c.devices.len()).map(|i| Op::put(c.device_row(i))).collect();
    c.svc(0).commit(rows).await.unwrap();
    c.wait_converged(T).await;
}

/// A follower tombstones another device's row: as the tombstone syncs, every remaining
/// device drops the removed one from its members and closes its session, although their
/// hosts still name it; from then on the removed device's writes reach nobody and nothing
/// reaches it, while the others keep syncing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstoned_device_row_shuts_the_device_out() {
    let mut c = Cluster::new(3, common::seed(51)).await;
    c.wait_leader(T).await;
    pair_everyone(&mut c).await;
    assert!(connected(&c, 0, 2) && connected(&c, 1, 2));

    c.svc(1).commit(vec![Op::delete::<Device>(Id(c.devices[2].id.0))]).await.unwrap();
    c.wait_for("devices 0 and 1 to drop device 2", T, || async {
        !lists(&c, 0, 2) && !lists(&c, 1, 2) && !connected(&c, 2, 0) && !connected(&c, 2, 1)
    })
    .await;
    let cut_at = c.svc(2).status().log_head.seq;
    c.svc(2).commit(vec![Op::put(library_models::Tag::new("removed".into(), None))]).await.unwrap();
    c.write(0, "after the removal").await;
    c.write(1, "from the other member").await;
    c.wait_synced(&[0, 1], T).await;
    assert_eq!(c.svc(2).status().log_head.seq, cut_at, "nothing reached the removed device");
    assert!(
        c.svc(2).status().role != sync_service::Role::Leader,
        "a removed device does not lead a library of its own"
    );
    assert!(!connected(&c, 2, 0) && !connected(&c, 2, 1), "it is refused, not reconnected");
    c.kill(2);
    c.wait_converged(T).await;
    c.assert_all_present().await;
    c.shutdown_all().await;
}

/// A device that removes itself (tombstones its own row) first hands that change to the
/// leader: the others learn of the removal and shut it out, and the device itself ends
/// `Removed`, connected to nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_removes_itself_hands_its_removal_over_first() {
    let mut c = Cluster::new(3, common::seed(52)).await;
    c.wait_leader(T).await;
    pair_everyone(&mut c).await;
    c.svc(2).commit(vec![Op::delete::<Device>(Id(c.devices[2].id.0))]).await.unwrap();
    c.wait_for("the removal to reach everyone", T, || async {
        !lists(&c, 0, 2)
            && !lists(&c, 1, 2)
            && c.svc(2).status().state == SyncState::Removed
            && c.svc(2).status().peers.iter().all(|p| !p.connected)
    })
    .await;
    let removed = c.devices[2].id;
    for i in 0..2 {
        let rows = c.svc(i).transaction_manager().roster().await.unwrap();
        assert!(rows.iter().any(|r| r.device == removed && r.removed), "device {i}: {rows:?}");
    }
    c.kill(2);
    c.write(0, "after").await;
    c.wait_converged(T).await;
    c.assert_all_present().await;
    c.shutdown_all().await;
}

/// A fourth device that only it names as a member cannot sync (nobody else names it); once a
/// member adds its device row with its endpoint id, the others let it in and dial it, it
/// catches up, and its own writes made while shut out are sequenced: four equal copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_row_added_lets_a_new_device_in() {
    let named = vec![Some(vec![0, 1, 2]), Some(vec![0, 1, 2]), Some(vec![0, 1, 2]), None];
    let mut c = Cluster::with_named(4, common::seed(53), common::test_config(), named).await;
    c.wait_for("devices 0-2 to follow device 0", T, || async {
        (0..3).all(|i| c.svc(i).status().leader == Some(c.devices[0].id))
    })
    .await;
    let rows: Vec<Op> = (0..3).map(|i| Op::put(c.device_row(i))).collect();
    c.svc(0).commit(rows).await.unwrap();
    c.write(1, "before the new device").await;
    let waiting = c.write(3, "written while shut out").await;
    c.wait_for("devices 0-2 to sync", T, || async {
        let heads: Vec<_> = (0..3).map(|i| c.svc(i).status().log_head).collect();
        heads.windows(2).all(|w| w[0] == w[1]) && heads[0].seq.0 >= 4
    })
    .await;
    assert!((0..3).all(|i| !lists(&c, i, 3)), "nobody lists device 3 yet");
    assert!(c.svc(3).status().peers.iter().all(|p| !p.connected), "device 3 is shut out");

    let row = c.device_row(3);
    c.svc(1).commit(vec![Op::put(row)]).await.unwrap();
    c.wait_converged(T).await;
    assert!((0..3).all(|i| connected(&c, i, 3)), "every member reaches device 3");
    assert!(c.acknowledged.contains(&waiting));
    c.assert_all_present().await;
    c.shutdown_all().await;
}

/// The rows decide over the host: once device 2's row is tombstoned, a host that names it
/// again (`set_members` with every device) does not bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naming_a_removed_device_again_does_not_readmit_it() {
    let mut c = Cluster::new(3, common::seed(54)).await;
    c.wait_leader(T).await;
    pair_everyone(&mut c).await;
    c.svc(0).commit(vec![Op::delete::<Device>(Id(c.devices[2].id.0))]).await.unwrap();
    c.wait_for("devices 0 and 1 to drop device 2", T, || async {
        !lists(&c, 0, 2) && !lists(&c, 1, 2)
    })
    .await;
    for i in 0..2 {
        c.svc(i).set_members(c.members()).unwrap();
    }
    c.write(0, "after naming it again").await;
    c.wait_synced(&[0, 1], T).await;
    assert!(!lists(&c, 0, 2) && !lists(&c, 1, 2), "the tombstone still shuts it out");
    assert!(!connected(&c, 2, 0) && !connected(&c, 2, 1));
    c.kill(2);
    c.wait_converged(T).await;
    c.assert_all_present().await;
    c.shutdown_all().await;
}
