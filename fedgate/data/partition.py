"""Split one Dataset into client partitions: IID, label skew, topic skew, quantity skew, and
degradation-kind skew; preference pairs take IID, quantity skew and a skew over which of
their two replies is longer (:func:`partition_pairs`).

Partitions are always disjoint and together cover every row. A partition smaller than
`min_partition_size` is an error, never silently tolerated. The random methods
("dirichlet", "quantity" with very small alpha) redraw with derived seeds a few times
before giving up, the way flwr_datasets' DirichletPartitioner does.
"""

from __future__ import annotations

import logging

import datasets
import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, SizePartitioner

from fedgate.data.schema import DataError

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("iid", "dirichlet", "domain", "quantity", "kind")
ALIGNED_KINDS = frozenset({"", "real", "concise"})  # the embedded set's kinds that are not a flaw
MAX_DRAWS = 10


def _check_sizes(sizes: list[int], method: str, min_size: int, context: str = "") -> None:
    """Raise naming the first partition below `min_size` rows."""
    for partition_id, size in enumerate(sizes):
        if size < min_size:
            raise DataError(
                f"partition {partition_id} has {size} rows (< min_partition_size={min_size}) "
                f"with method {method!r}{context}; partition sizes: {sizes}"
            )


def _too_small(parts: list[datasets.Dataset], min_size: int) -> bool:
    return any(len(p) < min_size for p in parts)


def _iid(ds: datasets.Dataset, num_partitions: int, seed: int) -> list[datasets.Dataset]:
    """Random equal-size shards (sizes differ by at most one)."""
    partitioner = IidPartitioner(num_partitions=num_partitions)
    partitioner.dataset = ds.shuffle(seed=seed)  # IidPartitioner shards contiguously
    return [partitioner.load_partition(i) for i in range(num_partitions)]


def _dirichlet(ds: datasets.Dataset, num_partitions: int, label: str, alpha: float, seed: int,
               min_size: int) -> list[datasets.Dataset]:
    """Label skew: each label value is spread over clients by proportions ~ Dir(alpha)."""
    if label not in ds.column_names:
        raise DataError(f"dirichlet partitioning: no label column {label!r}; columns are {ds.column_names}")
    parts: list[datasets.Dataset] = []
    for draw in range(MAX_DRAWS):
        # min_partition_size=0: the size check and redraw happen here, with our error.
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions, partition_by=label, alpha=float(alpha),
            min_partition_size=0, self_balancing=False, shuffle=True, seed=seed + draw,
        )
        partitioner.dataset = ds
        parts = [partitioner.load_partition(i) for i in range(num_partitions)]
        if not _too_small(parts, min_size):
            break
        log.debug("dirichlet draw %d left a partition below %d rows; redrawing", draw, min_size)
    return parts


def _quantity_sizes(n: int, num_partitions: int, alpha: float, seed: int, min_size: int) -> list[int]:
    """Sizes: `min_size` each, the rest shared by proportions ~ Dir(alpha) over clients."""
    rest = n - num_partitions * min_size
    shares = np.random.default_rng(seed).dirichlet(np.full(num_partitions, float(alpha)))
    raw = shares * rest
    sizes = np.floor(raw).astype(int)
    # Largest remainders get the leftover rows, so the sizes sum exactly to n.
    for i in np.argsort(-(raw - sizes), kind="stable")[: rest - sizes.sum()]:
        sizes[i] += 1
    return [int(s) + min_size for s in sizes]


def _quantity(ds: datasets.Dataset, num_partitions: int, alpha: float, seed: int,
              min_size: int) -> list[datasets.Dataset]:
    """Quantity skew: sizes ~ Dir(alpha) over clients, rows (and so labels) drawn IID."""
    partitioner = SizePartitioner(partition_sizes=_quantity_sizes(len(ds), num_partitions, alpha, seed, min_size))
    partitioner.dataset = ds.shuffle(seed=seed)
    return [partitioner.load_partition(i) for i in range(num_partitions)]


def _domain(ds: datasets.Dataset, num_partitions: int, seed: int) -> list[datasets.Dataset]:
    """Topic skew: whole `domain` values go to one client each, balancing row counts.

    Domains are visited largest first (seeded order among equal sizes), each going to the
    currently smallest partition. flwr_datasets' NaturalIdPartitioner makes one
    partition per domain and GroupedNaturalIdPartitioner fixes the group size rather than
    the partition count, so neither gives `num_partitions` balanced groups.
    """
    if "domain" not in ds.column_names:
        raise DataError(f"domain partitioning: no 'domain' column; columns are {ds.column_names}")
    indices: dict[str, list[int]] = {}
    for index, domain in enumerate(ds["domain"]):
        indices.setdefault(domain, []).append(index)
    domains = sorted(indices)
    tie_break = np.random.default_rng(seed).permutation(len(domains))
    order = sorted(range(len(domains)), key=lambda k: (-len(indices[domains[k]]), tie_break[k]))
    assigned: list[list[int]] = [[] for _ in range(num_partitions)]
    for k in order:
        smallest = min(range(num_partitions), key=lambda p: (len(assigned[p]), p))
        assigned[smallest].extend(indices[domains[k]])
    return [ds.select(sorted(rows)) for rows in assigned]


def _kind(ds: datasets.Dataset, num_partitions: int, seed: int) -> list[datasets.Dataset]:
    """Degradation-kind skew: each client sees only some kinds of bad answer.

    The degraded kinds (every ``kind`` but real and concise), sorted, are dealt round-robin:
    client ``c`` gets kind ``i`` when ``i % P == c % K`` (P clients, K kinds), so with fewer
    clients than kinds each client holds several whole kinds, with more each kind is shared
    by several clients (rows split evenly among them). Good answers are spread IID over every
    client. A federation must pool what each client learned about its own flaws to score
    every flaw: the non-IID setting where federating matters most."""
    if "kind" not in ds.column_names:
        raise DataError(f"kind partitioning: no 'kind' column; columns are {ds.column_names}")
    rng = np.random.default_rng(seed)
    kinds = np.asarray(ds["kind"])
    degraded = sorted(set(kinds.tolist()) - ALIGNED_KINDS)
    if not degraded:
        raise DataError("kind partitioning: no degraded rows (every kind is real or concise)")
    assigned: list[list[int]] = [[] for _ in range(num_partitions)]
    for i, kind in enumerate(degraded):
        owners = [c for c in range(num_partitions) if i % num_partitions == c % len(degraded)]
        rows = rng.permutation(np.flatnonzero(kinds == kind))
        for owner, chunk in zip(owners, np.array_split(rows, len(owners))):
            assigned[owner].extend(chunk.tolist())
    good = rng.permutation(np.flatnonzero(np.isin(kinds, list(ALIGNED_KINDS))))
    for c, chunk in enumerate(np.array_split(good, num_partitions)):
        assigned[c].extend(chunk.tolist())
    return [ds.select(sorted(rows)) for rows in assigned]


def partition_dataset(
    ds: datasets.Dataset,
    num_partitions: int,
    method: str = "iid",
    *,
    alpha: float = 0.5,
    seed: int = 0,
    label: str = "helpfulness",
    min_partition_size: int = 1,
) -> list[datasets.Dataset]:
    """Split `ds` into `num_partitions` disjoint client datasets covering all rows.

    Methods: ``"iid"`` (random equal shards), ``"dirichlet"`` (label skew over `label`,
    smaller `alpha` = more skew), ``"domain"`` (each `domain` value wholly on one client),
    ``"quantity"`` (client sizes ~ Dirichlet(`alpha`), labels IID), ``"kind"`` (each client
    sees only some kinds of degraded answer, see :func:`_kind`). Deterministic for a seed.
    """
    if method not in METHODS:
        raise DataError(f"unknown partition method {method!r}; valid: {list(METHODS)}")
    if num_partitions < 1:
        raise DataError(f"num_partitions must be >= 1, got {num_partitions}")
    if method in ("dirichlet", "quantity") and not alpha > 0:
        raise DataError(f"alpha must be > 0 for method {method!r}, got {alpha}")
    min_size = max(1, min_partition_size)  # an empty client is never useful
    n = len(ds)
    even = [n // num_partitions + (i < n % num_partitions) for i in range(num_partitions)]
    _check_sizes(even, method, min_size, context=f" (too few rows: {n} for {num_partitions} partitions, even split)")
    if method == "iid":
        parts = _iid(ds, num_partitions, seed)
    elif method == "dirichlet":
        parts = _dirichlet(ds, num_partitions, label, alpha, seed, min_size)
    elif method == "quantity":
        parts = _quantity(ds, num_partitions, alpha, seed, min_size)
    elif method == "kind":
        parts = _kind(ds, num_partitions, seed)
    else:
        parts = _domain(ds, num_partitions, seed)
    retried = f" after {MAX_DRAWS} draws (raise alpha or lower min_partition_size)" if method == "dirichlet" else ""
    _check_sizes([len(p) for p in parts], method, min_size, context=retried)
    return parts


PAIR_METHODS: tuple[str, ...] = ("iid", "dirichlet", "quantity")
PAIR_SKEW = "longer_wins"  # what "dirichlet" skews on pairs


def partition_pairs(ds: datasets.Dataset, num_partitions: int, method: str = "iid", *, alpha: float = 0.5,
                    seed: int = 0) -> list[datasets.Dataset]:
    """Client partitions of preference pairs. ``"dirichlet"`` skews clients over whether the
    chosen reply is the longer one: on HH-RLHF harmlessness pairs the shorter reply wins more
    often, so a client can see mostly pairs where length points one way, and a federation
    must pool clients to learn more than a length rule. ``"domain"`` and ``"kind"`` need
    rated rows."""
    if method not in PAIR_METHODS:
        raise DataError(f"partitioner {method!r} needs rated rows; preference pairs take {list(PAIR_METHODS)}")
    longer = [int(len(c) > len(r)) for c, r in zip(ds["chosen"], ds["rejected"])]
    parts = partition_dataset(ds.add_column(PAIR_SKEW, longer), num_partitions, method, alpha=alpha, seed=seed,
                              label=PAIR_SKEW)
    return [p.remove_columns(PAIR_SKEW) for p in parts]


def split_by_prompt(ds: datasets.Dataset, fractions: dict[str, float], seed: int = 0) -> dict[str, datasets.Dataset]:
    """Split rows into named parts by prompt (all responses to a prompt land in one part), so
    no prompt is both trained on and evaluated; parts get about ``fractions`` of the prompts."""
    if not ds.num_rows:
        raise DataError("cannot split an empty dataset")
    prompts = list(dict.fromkeys(ds["prompt"]))
    order = np.random.default_rng(seed).permutation(len(prompts))
    total, bounds, acc = sum(fractions.values()), [], 0.0
    for frac in fractions.values():
        acc += frac / total
        bounds.append(round(acc * len(prompts)))
    part_of, start = {}, 0
    for name, stop in zip(fractions, bounds):
        for i in order[start:stop]:
            part_of[prompts[i]] = name
        start = stop
    rows = {name: [] for name in fractions}
    for i, prompt in enumerate(ds["prompt"]):
        rows[part_of[prompt]].append(i)
    empty = [name for name, idx in rows.items() if not idx]
    if empty:
        raise DataError(f"splitting {len(prompts)} prompts by {fractions} leaves {empty} empty; give more rows")
    return {name: ds.select(idx) for name, idx in rows.items()}
