//! `cargo xtask demo`: shows, honestly, what works so far, on a temporary directory.
//!
//! Until the host exists this walks through the lower layers: a leader's sync log, a
//! re-submission that is not sequenced twice, a follower's verified copy, a forged entry that is
//! caught, pruning; then the write path: two devices write while apart, the leader sequences,
//! and both end with the same content hash.

use library_models as _;
use library_models::{Tag, UserMetadata, UserMetadataTag};
use sync_log::{Change, ChangeType, DeviceId, Epoch, Hlc, LibraryId, OriginKey, Seq, SyncLogStore};
use txn_manager::{Config, Library, Op};

fn change(device: DeviceId, seq: u64, what: &str) -> anyhow::Result<Change> {
    Ok(Change {
        origin: OriginKey { device, seq },
        hlc: Hlc::new(1_700_000_000_000 + seq, 0),
        model: "tag".into(),
        record: uuid::Uuid::now_v7(),
        change: ChangeType::Insert,
        version: 1,
        payload: sync_log::codec::encode(what)?,
    })
}

pub(crate) fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let library = LibraryId::new_v7();
    let laptop = DeviceId::new_v7();
    let phone = DeviceId::new_v7();
    println!("library {library}\n  laptop {laptop} (leader, epoch 1)\n  phone  {phone}\n");

    let leader_path = dir.path().join("laptop-sync.db");
    let mut leader = SyncLogStore::create(&leader_path, library)?;
    let batch = vec![
        change(laptop, 1, "holiday")?,
        change(laptop, 2, "work")?,
        change(phone, 1, "screenshots")?,
    ];
    for a in leader.append(Epoch(1), &batch)? {
        println!("sequenced                     -> seq {}", a.seq);
    }
    let again = leader.append(Epoch(1), &batch[2..])?;
    println!(
        "phone re-submits its change   -> seq {} (new: {}), nothing written twice",
        again[0].seq, again[0].new
    );
    println!("leader head                   -> {:?}\n", leader.head());

    let mut follower = SyncLogStore::create(&dir.path().join("phone-sync.db"), library)?;
    let entries = leader.read_after(Seq(0), 1_000)?;
    let head = follower.append_sequenced(&entries)?;
    println!("phone copies entries after 0  -> head {head:?} (chain verified)");
    follower.append_sequenced(&entries)?;
    println!("same entries delivered again  -> harmless, head {:?}", follower.head());

    leader.append(Epoch(1), &[change(laptop, 3, "family")?])?;
    let mut forged = leader.read_after(Seq(3), 10)?;
    if let Some(first) = forged.first_mut() {
        first.change.payload.push(b'!');
    }
    match follower.append_sequenced(&forged) {
        Err(e) => println!("a forged entry                -> refused: {e}"),
        Ok(_) => anyhow::bail!("a forged entry was accepted"),
    }

    drop(leader);
    let mut leader = SyncLogStore::open(&leader_path, library)?;
    println!("\nleader restarts               -> head {:?}", leader.head());
    leader.prune_below(Seq(3))?;
    match leader.read_after(Seq(0), 10) {
        Err(e) => println!("after pruning below 3         -> {e}"),
        Ok(_) => anyhow::bail!("pruned entries were served"),
    }
    match SyncLogStore::open(&leader_path, LibraryId::new_v7()) {
        Err(e) => println!("opened as another library     -> {e}"),
        Ok(_) => anyhow::bail!("a foreign library was opened"),
    }
    write_path(dir.path())?;
    println!(
        "\nNot yet here: the sync service that runs this over iroh (the protocol, leadership and\n\
         write path are built and tested as crates), the resumable jobs and the host."
    );
    Ok(())
}

/// Two devices write while apart; the laptop leads: it sequences both outboxes, the phone
/// receives the log; both end with identical tables.
fn write_path(dir: &std::path::Path) -> anyhow::Result<()> {
    println!("\n-- write path --");
    let library = LibraryId::new_v7();
    let open = |name: &str, device: DeviceId| -> anyhow::Result<(Library, SyncLogStore)> {
        let registry = syncable::Registry::from_inventory()?;
        registry.require(library_models::REFERENCE_MODELS)?;
        let mut log = SyncLogStore::create(&dir.join(format!("{name}-log.db")), library)?;
        let path = dir.join(format!("{name}.db"));
        let lib = Library::open(&path, &mut log, device, registry, Config::default())?;
        Ok((lib, log))
    };
    let (mut laptop, mut laptop_log) = open("laptop", DeviceId::new_v7())?;
    let (mut phone, mut phone_log) = open("phone", DeviceId::new_v7())?;

    let holiday = Tag::new("holiday".into(), Some("#ff8800".into()));
    let photo = UserMetadata::new(None, Some("beach.jpg".into()), true, false);
    laptop.commit(vec![Op::put(holiday.clone()), Op::put(photo.clone())])?;
    let link = UserMetadataTag::link(photo.uuid, holiday.uuid);
    phone.commit(vec![Op::put(Tag::new("screenshots".into(), None))])?;
    println!(
        "offline writes                -> laptop outbox {}, phone outbox {} (no leader needed)",
        laptop.outbox(100)?.len(),
        phone.outbox(100)?.len()
    );

    // The phone's change reaches the leader (the service will carry it over iroh).
    laptop.commit(vec![Op::put(link)])?;
    let forwarded = phone.outbox(100)?;
    laptop_log.append(Epoch(1), &forwarded)?;
    let head = laptop.sequence(&mut laptop_log, Epoch(1))?;
    println!("laptop sequences all outboxes -> log head {head}");
    let entries = laptop_log.read_after(Seq(0), 1_000)?;
    let report = phone.receive(&mut phone_log, &entries)?;
    println!("phone receives the log        -> {report:?}");
    println!(
        "outboxes after apply          -> laptop {}, phone {}",
        laptop.outbox(100)?.len(),
        phone.outbox(100)?.len()
    );
    let (a, b) = (laptop.content_hash()?, phone.content_hash()?);
    println!(
        "content hashes                -> laptop {a:?}\n                                 phone  {b:?}"
    );
    anyhow::ensure!(a == b, "the devices diverged");
    Ok(())
}
