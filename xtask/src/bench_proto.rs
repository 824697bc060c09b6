//! Benchmark owned by a later issue; not written yet.

pub(crate) fn run() -> anyhow::Result<()> {
    anyhow::bail!("this benchmark is not written yet")
}
