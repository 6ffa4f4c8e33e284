"""Draw the latest benchmark results as charts: every loop's ratio to uvloop, per case.

    .venv/bin/python benches/chart.py                      # newest net-*.json and micro-*.json
    .venv/bin/python benches/chart.py results/net-X.json   # given files (net and/or micro)
    .venv/bin/python benches/chart.py --out-dir docs --prefix bench-

Writes benches/results/chart-net.png and chart-micro.png (`make bench` runs it after the
suites). Each row is a case; each loop is a lollipop from 1.0 (the baseline, uvloop) to its
ratio: the median over rounds of the per-round ratio, as the suites' summaries compute it.
The shaded band is the A/A control (the baseline measured a second time), min to max over
the rounds: a ratio inside it is not distinguishable from noise. Net cases are compared in
requests per server-CPU-second (`--metric rps` for requests per second).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use('Agg')  # headless: no display on a benchmark machine or in CI

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

RESULTS = Path(__file__).resolve().parent / 'results'

# Drawing order top to bottom within a case, with each loop's look. The baseline is the
# vertical 1.0 line and its second measurement the band, so neither has a lane.
LANES = ('oxloop', 'rloop', 'asyncio', 'floor')
STYLE = {
    'oxloop': {'color': '#d9480f', 'marker': 'o', 'label': 'oxloop'},
    'rloop': {'color': '#7048e8', 'marker': 's', 'label': 'rloop'},
    'asyncio': {'color': '#1c7ed6', 'marker': 'D', 'label': 'asyncio (stdlib loop)'},
    'floor': {'color': '#2b8a3e', 'marker': '^', 'label': 'floor (plain Rust, no Python)'},
}
BAND_COLOR = '#fab005'
CLIP = 0.25


@dataclass
class Case:
    title: str
    ratios: dict[str, float] = field(default_factory=dict)  # loop -> median per-round ratio
    band: tuple[float, float] | None = None  # A/A min-max over rounds
    failed: list[str] = field(default_factory=list)  # loops that ran with errors and have no ratio


@dataclass
class Chart:
    kind: str  # 'net' or 'micro'
    source: Path
    baseline: str
    aa: str
    cases: list[Case]
    subtitle: str


def per_round_ratios(a: dict[str, float], b: dict[str, float]) -> list[float]:
    """a[r] / b[r] for every round both have, as the suites pair them."""
    return [a[r] / b[r] for r in sorted(a, key=int) if r in b and a[r] and b[r]]


def net_values(entry: dict[str, Any], metric: str) -> dict[str, float]:
    return {r: m[metric] for r, m in entry.get('rounds', {}).items() if m.get(metric)}


def micro_values(entry: dict[str, Any]) -> dict[str, float]:
    return {str(i): x for i, x in enumerate(entry.get('ops_per_s', [])) if x}


def load(path: Path, metric: str) -> Chart:
    data = json.loads(path.read_text())
    kind = 'micro' if path.name.startswith('micro') or 'scale' in data.get('args', {}) else 'net'
    baseline = data.get('baseline') or 'uvloop'
    aa = data.get('aa_control') or f'{baseline}#2'
    cases = []
    for bench in data['benchmarks'].values():
        if bench.get('skipped'):
            continue
        contestants = bench['contestants']
        if kind == 'net':
            values = {name: net_values(entry, metric) for name, entry in contestants.items()}
        else:
            values = {name: micro_values(entry) for name, entry in contestants.items()}
        base = values.get(baseline)
        if not base:
            continue
        case = Case(bench['title'].replace(' x ', ' × '))
        for name, vals in values.items():
            ratios = per_round_ratios(vals, base)
            if not ratios or name == baseline:
                continue
            if name == aa:
                case.band = (min(ratios), max(ratios))
            else:
                case.ratios[name] = statistics.median(ratios)
        case.failed = sorted(name for name in bench.get('errors', {}) if name not in case.ratios and name in LANES)
        cases.append(case)
    machine = data.get('machine', {})
    versions = ', '.join(
        f'{name} {machine[name]["version"]}'
        for name in ('oxloop', 'uvloop', 'rloop')
        if isinstance(machine.get(name), dict) and machine[name].get('version')
    )
    rounds = data.get('args', {}).get('rounds')
    subtitle = (
        f'{data.get("timestamp", "")[:10]}, CPython {machine.get("python", "?")}, {versions}; '
        f'median of per-round ratios over {rounds} interleaved round{"s" if rounds != 1 else ""} ({path.name})'
    )
    return Chart(kind, path, baseline, aa, cases, subtitle)


def fmt_ratio(x: float) -> str:
    return f'{x:.2f}×' if x < 10 else f'{x:.0f}×'


def draw(chart: Chart, out: Path, metric: str) -> None:
    cases = chart.cases
    lanes = [name for name in LANES if any(name in c.ratios or name in c.failed for c in cases)]
    values = [r for c in cases for r in c.ratios.values()] + [x for c in cases if c.band for x in c.band]
    # Ratios below CLIP are drawn at the edge with their value: the stdlib loop's 0.03x
    # would otherwise squeeze the region around 1.0 where the loops differ.
    lo = max(min([*values, 0.8]), CLIP) / 1.3
    hi = max([*values, 1.25]) * 1.45  # room for the value labels on the right

    row_h = 0.22 * max(len(lanes), 2) + 0.3
    fig_h = 1.6 + row_h * len(cases)
    fig, ax = plt.subplots(figsize=(9.5, fig_h), dpi=110)
    ax.set_xscale('log')
    ax.set_xlim(lo, hi)
    ax.set_ylim(len(cases) - 0.5, -0.5)

    step = 0.8 / max(len(lanes), 1)
    offsets = {name: -0.4 + step * (i + 0.5) for i, name in enumerate(lanes)}
    for i, case in enumerate(cases):
        if i % 2:
            ax.axhspan(i - 0.5, i + 0.5, color='#f1f3f5', zorder=0)
        if case.band:
            ax.fill_betweenx([i - 0.45, i + 0.45], *case.band, color=BAND_COLOR, alpha=0.45, lw=0, zorder=1)
        for name in lanes:
            y = i + offsets[name]
            style = STYLE[name]
            if name in case.ratios:
                r = case.ratios[name]
                x = max(r, lo * 1.04)
                clipped = x != r
                ax.plot([1, x], [y, y], color=style['color'], lw=2.2, ls=':' if clipped else '-', zorder=2)
                marker = '<' if clipped else style['marker']
                ax.plot(x, y, marker=marker, color=style['color'], ms=6.5, zorder=3, mec='white', mew=0.6)
                ax.annotate(
                    fmt_ratio(r),
                    (x, y),
                    xytext=(-6 if 1 > r and not clipped else 6, 0),
                    textcoords='offset points',
                    ha='right' if 1 > r and not clipped else 'left',
                    va='center',
                    fontsize=7.5,
                    color=style['color'],
                    fontweight='bold' if name == 'oxloop' else 'normal',
                    # over a clipped (dotted) line, the label needs a background to be read
                    bbox={'fc': 'white', 'ec': 'none', 'pad': 0.6} if clipped else None,
                )
            elif name in case.failed:
                ax.annotate(
                    f'{name}: failed',
                    (1, y),
                    xytext=(6, 0),
                    textcoords='offset points',
                    va='center',
                    fontsize=7,
                    style='italic',
                    color='#868e96',
                )
    ax.axvline(1.0, color='black', lw=1.2, zorder=2.5)

    ax.set_yticks(range(len(cases)), [c.title for c in cases], fontsize=9)
    ax.tick_params(axis='y', length=0)
    ticks: list[float] = []
    for t in (1, 0.75, 0.5, 0.25, 1.25, 1.5, 2, 3, 4, 6):
        # keep a tick only where its label has room (a fourteenth of the axis from any other)
        if lo <= t <= hi and all(abs(math.log(t / u)) > math.log(hi / lo) / 14 for u in ticks):
            ticks.append(t)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f'{x:g}×'))
    ax.grid(axis='x', color='#dee2e6', lw=0.8, zorder=0)
    ax.set_axisbelow(True)
    for side in ('top', 'right', 'left'):
        ax.spines[side].set_visible(False)

    if chart.kind == 'net':
        unit = 'requests per server-CPU-second' if metric == 'rps_per_cpu' else 'requests per second'
        title = f'Servers under load (benches/net.py): {unit}, ratio to {chart.baseline}'
    else:
        title = f'Loop primitives (benches/micro.py): operations per second, ratio to {chart.baseline}'
    clip_note = f'; ◀ at the left edge: below {CLIP:g}×, value as labelled' if min(values) < lo else ''
    ax.set_xlabel(
        f'ratio to {chart.baseline}, log scale (right of 1.0: faster than {chart.baseline}{clip_note})', fontsize=9
    )
    fig.suptitle(title, fontsize=11.5, fontweight='bold', x=0.01, ha='left', y=1 - 0.12 / fig_h)
    fig.text(0.01, 1 - 0.42 / fig_h, chart.subtitle, fontsize=8, color='#495057', ha='left')

    handles = [
        Line2D([], [], color=STYLE[n]['color'], marker=STYLE[n]['marker'], lw=2.2, label=STYLE[n]['label'])
        for n in lanes
    ]
    handles.append(Line2D([], [], color='black', lw=1.2, label=f'{chart.baseline} = 1.0'))
    if any(c.band for c in cases):
        handles.append(
            Patch(color=BAND_COLOR, alpha=0.45, lw=0, label=f'A/A band: {chart.aa} / {chart.baseline}, min–max')
        )
    fig.legend(
        handles=handles,
        loc='upper left',
        bbox_to_anchor=(0.01, 1 - 0.6 / fig_h),
        ncol=len(handles),
        fontsize=8,
        frameon=False,
        handlelength=2.2,
        columnspacing=1.2,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / fig_h))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def newest(kind: str) -> Path | None:
    # The timestamp in the name sorts in time order.
    files = sorted(RESULTS.glob(f'{kind}-*.json'))
    return files[-1] if files else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument(
        'files', nargs='*', type=Path, help='results files (default: the newest net-*.json and micro-*.json)'
    )
    p.add_argument('--out-dir', type=Path, default=RESULTS, help='where to write the PNGs (default: benches/results)')
    p.add_argument('--prefix', default='chart-', help='file name prefix: <prefix>net.png, <prefix>micro.png')
    p.add_argument('--metric', choices=('rps_per_cpu', 'rps'), default='rps_per_cpu', help='net cases: what to compare')
    args = p.parse_args(argv)

    files = args.files or [f for f in (newest('net'), newest('micro')) if f]
    if not files:
        print(f'chart.py: no results in {RESULTS}: run `make bench` first', file=sys.stderr)
        return 1
    written: set[str] = set()
    for path in files:
        chart = load(path, args.metric)
        if chart.kind in written:
            print(f'chart.py: more than one {chart.kind} file given; {path} would overwrite the chart', file=sys.stderr)
            return 2
        if not chart.cases:
            print(f'chart.py: {path}: no case with a {chart.baseline} measurement, nothing to draw', file=sys.stderr)
            continue
        out = args.out_dir / f'{args.prefix}{chart.kind}.png'
        draw(chart, out, args.metric)
        written.add(chart.kind)
        print(f'chart.py: {path.name} -> {out}')
    return 0 if written else 1


if __name__ == '__main__':
    sys.exit(main())
