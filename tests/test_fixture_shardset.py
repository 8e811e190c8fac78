import webdataset as wds


def test_tiny_shardset_reads_with_webdataset(tiny_shardset):
    ds = wds.WebDataset(sorted(str(p) for p in tiny_shardset.glob("*.tar")), shardshuffle=False)
    recs = list(ds)
    assert len(recs) == 96
    assert {r["cls"] for r in recs} == {b"0", b"1", b"2", b"3"}
    assert all(r["jpg"][:2] == b"\xff\xd8" for r in recs)
