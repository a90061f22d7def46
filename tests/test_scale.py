"""Scale (issue 5): streamed kernels against an explicit float64 reference, storage dtypes, memory-mapped sets,
top-k with a bounded truncation error, and the ``bench kernel`` command."""

import json
import math

import numpy as np
import pytest
import torch

from safedenoiser import NegationSet, NegationSetError
from safedenoiser.bench.kernel import peak_extra_memory
from safedenoiser.bench.naive import naive_moments, relative_error as rel_err
from safedenoiser.cli import main
from safedenoiser.kernels import auto_chunk_size, combine_moments, kernel_moments
from safedenoiser.scale import MappedFileError, NegationFileWriter, TopKError, TopKKernel, map_array

pytestmark = pytest.mark.usefixtures("one_thread")


def clustered(n, dim, seed=0, clusters=50):
    gen = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(clusters, dim, generator=gen)
    return centres[torch.randint(0, clusters, (n,), generator=gen)] + 0.5 * torch.randn(n, dim, generator=gen)


@pytest.mark.parametrize("storage", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("distance", ["squared", "euclidean"])
def test_streaming_matches_explicit_reference_for_every_storage(storage, distance):
    points = clustered(3001, 96).to(storage)  # N not a multiple of any chunk size
    gen = torch.Generator().manual_seed(1)
    x = points[:3].double() + 0.3 * torch.randn(3, 96, generator=gen, dtype=torch.float64)
    bandwidth = torch.tensor([0.4, 6.0, 20.0], dtype=torch.float64)
    ref_mass, ref_mean, _ = naive_moments(x, points.double(), bandwidth, distance, rows=1)  # exact on the stored values
    for chunk in (None, 1, 500, 5000):
        m = kernel_moments(x, points, bandwidth, distance=distance, chunk_size=chunk, dtype=torch.float64)
        assert rel_err(m.log_mass, ref_mass) <= 1e-10 and rel_err(m.mean, ref_mean) <= 1e-10
    # float32 accumulation: logits carry an absolute error ~ eps32 |x| |x_n| / sigma^2, so compare where
    # sigma is not small against |x| (rows 2 and 3); float64 accumulation (above) covers small bandwidths
    m32 = kernel_moments(x[1:].float(), points, bandwidth[1:].float(), distance=distance, dtype=torch.float32)
    assert m32.log_mass.dtype == torch.float32
    assert rel_err(m32.log_mass, ref_mass[1:]) <= 1e-5 and rel_err(m32.mean, ref_mean[1:]) <= 1e-5


def test_naive_formulation_and_shards_agree():
    points = clustered(2000, 32, seed=2)
    x = points[5:9] + 0.2
    stream = kernel_moments(x.double(), points.double(), 0.8)
    naive_mass, naive_mean, _ = naive_moments(x.double(), points.double(), 0.8)
    assert rel_err(stream.log_mass, naive_mass) <= 1e-12 and rel_err(stream.mean, naive_mean) <= 1e-12
    shards = combine_moments([kernel_moments(x.double(), part.double(), 0.8) for part in points.split(700)])
    assert rel_err(shards.log_mass, stream.log_mass) <= 1e-12 and rel_err(shards.mean, stream.mean) <= 1e-12
    assert torch.equal(shards.max_logit, stream.max_logit)


def test_peak_memory_does_not_grow_with_n():
    dim = 512
    x = torch.randn(4, dim)
    chunk = auto_chunk_size(dim)
    peaks = []
    for n in (20_000, 160_000):
        points = torch.randn(n, dim).half()  # float16 storage: the kernel converts chunk by chunk
        sq = NegationSet(points, validate=False).sq_norms
        kernel_moments(x, points[:5000], 30.0, point_sq_norms=sq[:5000])  # warm-up: compiling is not a call's memory
        _, peak = peak_extra_memory(lambda: kernel_moments(x, points, 30.0, point_sq_norms=sq))
        if peak is None:
            pytest.skip("peak resident memory is not measurable here (needs Linux /proc/self/clear_refs)")
        peaks.append(peak)
        del points
    budget = 3 * chunk * dim * 4 + 8 * x.numel() * 8 + (4 << 20)  # buffer + a few B x D / B x chunk + slack
    assert max(peaks) <= budget, (peaks, budget)
    assert 160_000 * dim * 4 > 20 * budget  # a float32 copy of the set would have shown


def test_negation_set_kernel_options(tmp_path):
    data = clustered(500, 16, seed=3).reshape(500, 4, 4)
    x = torch.randn(2, 16)
    neg = NegationSet(data, compute_dtype=torch.float64, chunk_size=64)
    m = neg.moments(x, 1.0)
    assert m.log_mass.dtype == torch.float64
    ref_mass, ref_mean, _ = naive_moments(x.double(), neg.flat.double(), torch.ones(2), rows=1)
    assert rel_err(m.log_mass, ref_mass) <= 1e-12 and rel_err(m.mean, ref_mean) <= 1e-12
    moved = neg.to(dtype=torch.float16)
    assert moved.compute_dtype == torch.float64 and moved.chunk_size == 64 and moved.dtype == torch.float16
    assert neg.sq_norms.dtype == torch.float64 and NegationSet(data).sq_norms.dtype == torch.float32
    with pytest.raises(NegationSetError, match="compute_dtype"):
        NegationSet(data, compute_dtype=torch.float16)
    with pytest.raises(ValueError, match="accumulation dtype"):
        kernel_moments(x, neg.flat, 1.0, dtype=torch.bfloat16)


@pytest.mark.parametrize("storage", [torch.float32, torch.float16, torch.bfloat16])
def test_memory_mapped_sets_give_identical_results(tmp_path, storage):
    data = clustered(1200, 48, seed=4).to(storage).reshape(1200, 3, 4, 4)
    x = torch.randn(3, 48)
    in_memory = NegationSet(data, space="pixels", metadata={"k": 1})
    expected = {backend: in_memory.moments(x, 2.0, chunk_size=256, backend=backend) for backend in ("torch", "fused")}
    in_memory.save(tmp_path / "set.safetensors")
    writer = NegationFileWriter(tmp_path / "written.safetensors", tuple(data.shape), storage)
    for start in range(0, 1200, 500):
        writer.write(start, data[start : start + 500])
    writer.finish(space="pixels", metadata={"k": 1})
    opened = [NegationSet.open(tmp_path / "set.safetensors"), NegationSet.load(tmp_path / "written.safetensors", mmap=True),
              NegationSet.open(tmp_path / "written.safetensors", verify=False)]
    if storage != torch.bfloat16:  # numpy has no bfloat16
        np.save(tmp_path / "set.npy", data.numpy())
        data.numpy().tofile(tmp_path / "set.raw")
        opened += [NegationSet.open(tmp_path / "set.npy"), NegationSet.open(tmp_path / "set.raw", dtype=storage, shape=(-1, 3, 4, 4))]
    for mapped in opened:
        assert mapped.item_shape == (3, 4, 4) and mapped.dtype == storage
        for backend, want in expected.items():
            got = mapped.moments(x, 2.0, chunk_size=256, backend=backend)
            assert torch.equal(got.log_mass, want.log_mass) and torch.equal(got.mean, want.mean)
    assert opened[1].content_hash == in_memory.content_hash and opened[1].metadata == {"k": 1}
    assert torch.equal(NegationSet.load(tmp_path / "written.safetensors").data, data)  # also readable by safetensors


def test_writer_resumes_and_mapping_errors(tmp_path):
    path = tmp_path / "big.safetensors"
    first = NegationFileWriter(path, (10, 4), torch.float32)
    first.write(0, torch.ones(5, 4))
    del first  # interrupted before finishing
    resumed = NegationFileWriter(path, (10, 4), torch.float32, resume=True)
    assert torch.equal(resumed.tensor[:5], torch.ones(5, 4))
    resumed.write(5, 2 * torch.ones(5, 4))
    resumed.finish()
    assert NegationSet.load(path).data.sum() == 60
    with pytest.raises(MappedFileError, match="cannot resume"):
        NegationFileWriter(path, (11, 4), torch.float32, resume=True)
    with pytest.raises(MappedFileError, match="does not fit"):
        NegationFileWriter(tmp_path / "x.safetensors", (3, 4)).write(2, torch.ones(2, 4))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(NegationSetError, match="truncated"):
        NegationSet.open(path)
    with pytest.raises(NegationSetError, match="not found"):
        NegationSet.open(tmp_path / "missing.safetensors")
    (tmp_path / "raw.bin").write_bytes(b"\0" * 40)
    with pytest.raises(NegationSetError, match="give its dtype and shape"):
        NegationSet.open(tmp_path / "raw.bin")
    with pytest.raises(MappedFileError, match="whole number of rows"):
        map_array(tmp_path / "raw.bin", dtype=torch.float32, shape=(-1, 3))
    with pytest.raises(NegationSetError, match="lives on the CPU"):
        NegationSet.load(tmp_path / "x.safetensors", device="meta", mmap=True)


def test_exact_top_k_bound_holds_and_tolerance_is_met():
    points = clustered(6000, 24, seed=5)
    neg = NegationSet(points.double())
    gen = torch.Generator().manual_seed(6)
    x = points[:6].double() + 0.3 * torch.randn(6, 24, generator=gen, dtype=torch.float64)
    topk = TopKKernel(neg, "exact")
    for sigma in (0.2, 0.6, 2.0):
        band = torch.full((6,), sigma, dtype=torch.float64)
        ref_mass, ref_mean, _ = naive_moments(x.double(), neg.flat.double(), band, rows=1)
        fixed = topk.moments(x, sigma, k=50, tolerance=math.inf)
        assert fixed.guaranteed and not fixed.exact.any() and (fixed.k == 50).all()
        true_rel = torch.exp(ref_mass - fixed.log_mass) - 1  # left-out / retrieved mass, exactly
        assert (true_rel >= -1e-12).all() and (true_rel <= fixed.rel_bound * (1 + 1e-9) + 1e-15).all()
        assert ((fixed.mean - ref_mean).norm(dim=1) <= fixed.mean_bound + 1e-12).all()
        tol = topk.moments(x, sigma, k=50, tolerance=1e-3)
        assert (tol.rel_bound <= 1e-3).all()
        assert ((tol.mean - ref_mean).norm(dim=1) <= tol.mean_bound + 1e-10).all()
        assert (torch.exp(ref_mass - tol.log_mass) - 1 <= 1e-3 + 1e-12).all()
    strict = topk.moments(x, 2.0, k=10, tolerance=0.0, max_k=20)
    assert strict.exact.all() and (strict.k == 6000).all() and (strict.rel_bound == 0).all()
    ref_mass, _, _ = naive_moments(x.double(), neg.flat.double(), torch.full((6,), 2.0, dtype=torch.float64), rows=1)
    assert rel_err(strict.log_mass, ref_mass) <= 1e-12


def test_faiss_ivf_top_k_reports_its_error_within_tolerance():
    pytest.importorskip("faiss")
    points = clustered(20_000, 32, seed=7, clusters=100)
    neg = NegationSet(points)
    gen = torch.Generator().manual_seed(8)
    x = points[:8] + 0.2 * torch.randn(8, 32, generator=gen)
    topk = TopKKernel(neg, "ivf", nprobe=8, progress=False)
    assert not topk.guaranteed
    for sigma in (0.3, 1.0):
        result = topk.moments(x, sigma, k=64, tolerance=1e-3)
        ref_mass, ref_mean, _ = naive_moments(x.double(), neg.flat.double(), torch.full((8,), sigma), rows=1)
        assert (result.rel_bound <= 1e-3).all()
        assert rel_err(result.mean, ref_mean) <= 1e-3 and float((result.log_mass - ref_mass).abs().max()) <= 2e-3
    with pytest.raises(TopKError, match="k must be"):
        topk.moments(x, 1.0, k=0)
    with pytest.raises(TopKError, match="queries must be"):
        topk.moments(x[:, :5], 1.0)
    with pytest.raises(TopKError, match="cannot build index"):
        TopKKernel(neg, "NotAnIndex", progress=False)


def test_bench_kernel_command(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "kernel", "--sizes", "300", "5000", "--dims", "64", "--batches", "1", "2", "--sections", "grid", "storage",
                 "--repeats", "1", "--max-ram-gb", "0.0006", "--read-gib", "0.02", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "kernel.json").read_text())
    ok = [row for row in report["grid"] if row["status"] == "ok"]
    assert [row["n"] for row in ok] == [300, 300] and "skipped" in report["grid"][-1]["status"]
    assert all(row["rel_err_vs_naive_mean"] <= 1e-5 and row["seconds"] > 0 for row in ok)
    assert "| float16 |" in (out / "kernel.md").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "kernel", "--sizes", "0", "--out", str(out)])
    assert exit_info.value.code == 2 and "argument --sizes: expected an integer >= 1" in capsys.readouterr().err


def test_read_only_map_when_the_system_refuses_a_private_one(tmp_path, monkeypatch):
    """Linux without overcommit refuses copy-on-write maps larger than RAM + swap (ENOMEM): map read-only."""
    import errno

    data = torch.randn(50, 6)
    NegationSet(data).save(tmp_path / "set.safetensors")
    real = np.memmap

    def refusing(*args, **kwargs):
        if kwargs.get("mode") == "c":
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "memmap", refusing)
    mapped = NegationSet.open(tmp_path / "set.safetensors")
    assert torch.equal(mapped.data, data)
    assert torch.equal(mapped.moments(data[:2], 1.0).mean, NegationSet(data).moments(data[:2], 1.0).mean)
