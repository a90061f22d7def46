"""What every benchmark report shares: the best operating point per method, trade-off curves, markdown tables and
the results document. The benchmarks (``bench/toy.py``, ``bench/images.py``, ``bench/t2i.py``) measure; this
module only selects and writes."""

from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Sequence, TypeVar

R = TypeVar("R")

TARGET_BROKEN = 0.01  # a best point may add at most this share of broken outputs (issue 19)


def broken_limit(plain: float | None, target: float = TARGET_BROKEN) -> float:
    """The largest broken share a best point may have: ``target`` above the plain model's own share (the method may not
    add broken outputs beyond the detector's noise; the model's own failures are not the method's), at least
    ``target``; ``target`` when plain was not measured."""
    return target if plain is None or plain != plain else max(target, plain + target)


def plain_broken(rows: Iterable[Any]) -> float | None:
    """The broken share of the ``plain`` row of a benchmark's rows (None without one)."""
    return next((r.broken for r in rows if r.method == "plain"), None)


def best_per_method(rows: Iterable[R], *, key: Callable[[R], Hashable], meets: Callable[[R], bool],
                    cost: Callable[[R], float], risk: Callable[[R], float],
                    usable: Callable[[R], bool] | None = None) -> dict[Hashable, R]:
    """Per ``key`` (in order of first appearance): the lowest ``cost`` among the rows that meet the target, else the
    lowest ``risk`` (then cost). A trade-off comparison: every method is judged at its best swept setting.
    ``usable`` (e.g. broken outputs <= 1%): only usable rows compete; a method with none is judged by the same rule
    over all its rows, and the caller must flag its best row (``usable(best)`` is False)."""
    groups: dict[Hashable, list[R]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    best = {}
    for name, mine in groups.items():
        if usable is not None:
            mine = [r for r in mine if usable(r)] or mine
        ok = [r for r in mine if meets(r)]
        best[name] = min(ok, key=cost) if ok else min(mine, key=lambda r: (risk(r), cost(r)))
    return best


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table: ``| a | b |`` lines under a ``|---|---|`` rule."""
    line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "---|" * len(header), *(line(cells) for cells in rows)])


def plot_methods(ax: Any, rows: Sequence[R], method: Callable[[R], str], x: Callable[[R], float],
                 y: Callable[[R], float]) -> None:
    """One trade-off curve per method on ``ax`` (points sorted by x): plain as a star, rejection as a square, a
    single point without a line."""
    for name in dict.fromkeys(method(r) for r in rows):
        mine = sorted((r for r in rows if method(r) == name), key=x)
        marker = {"plain": "*", "rejection": "s"}.get(name, "o")
        ax.plot([x(r) for r in mine], [y(r) for r in mine], marker=marker, label=name,
                linestyle="-" if len(mine) > 1 else "none", markersize=10 if marker != "o" else 5)


def report_document(title: str, intro: str, config: dict[str, Any], best_heading: str, best_table: str,
                    all_table: str, samples_heading: str, grids: dict[str, str]) -> str:
    """The results.md of a benchmark: title, notes, configuration, the best point per method, every setting, the
    trade-off figure and the sample grids."""
    grid_md = "\n".join(f"- {m}: ![{m}]({g})" for m, g in grids.items())
    return f"""# {title}

{intro}

Configuration: `{config}`

## {best_heading}

{best_table}

## Every setting

{all_table}

## Trade-off

![trade-off](tradeoff.png)

## {samples_heading}

{grid_md}
"""
