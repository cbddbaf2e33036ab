"""The figures of a search, drawn with plotly: objective per trial with the best-so-far line,
parallel coordinates, objective against each parameter, and the top trials. `report_html`
writes them into one self-contained file (plotly's script inline: it works offline); the web
page reuses `figures`."""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from parasearch.trials import TrialRow, ranked


def figures(rows: list[TrialRow], maximize: bool,
            fidelity: str | None = None) -> dict[str, go.Figure]:
    """The figures of a search; with a fidelity dimension, also the objective by rung."""
    done = [r for r in rows if r.state == "completed" and r.value is not None]
    out = {"history": _history(done, maximize), "parallel": _parallel(done),
           "params": _against_params(done)}
    if fidelity is not None:
        out["rungs"] = _by_rung(done, fidelity)
    return out


def _by_rung(done: list[TrialRow], fidelity: str) -> go.Figure:
    fig = go.Figure()
    for budget in sorted({r.params.get(fidelity) for r in done}, key=float):
        here = [r for r in done if r.params.get(fidelity) == budget]
        fig.add_box(y=[r.value for r in here], name=f"{fidelity}={budget}", boxpoints="all")
    fig.update_layout(title="objective by rung", yaxis_title="objective")
    return fig


def _history(done: list[TrialRow], maximize: bool) -> go.Figure:
    best, line = None, []
    for r in done:
        best = r.value if best is None else (max if maximize else min)(best, r.value)
        line.append(best)
    fig = go.Figure()
    fig.add_scatter(x=[r.seq for r in done], y=[r.value for r in done], mode="markers",
                    name="objective", text=[_params_text(r) for r in done],
                    hovertemplate="trial %{x}: %{y}<br>%{text}<extra></extra>")
    fig.add_scatter(x=[r.seq for r in done], y=line, mode="lines", name="best so far",
                    line={"shape": "hv"})
    fig.update_layout(title="objective per trial", xaxis_title="trial",
                      yaxis_title="objective")
    return fig


def _numeric(done: list[TrialRow], name: str) -> tuple[list[float], list[str] | None]:
    values = [r.params.get(name) for r in done]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = sorted({str(v) for v in values})
    return [float(labels.index(str(v))) for v in values], labels


def _parallel(done: list[TrialRow]) -> go.Figure:
    names = sorted({k for r in done for k in r.params})
    dims = []
    for name in names:
        values, labels = _numeric(done, name)
        dim = {"label": name, "values": values}
        if labels is not None:
            dim.update(tickvals=list(range(len(labels))), ticktext=labels)
        dims.append(dim)
    dims.append({"label": "objective", "values": [r.value for r in done]})
    fig = go.Figure(go.Parcoords(line={"color": [r.value for r in done],
                                       "colorscale": "Viridis", "showscale": True},
                                 dimensions=dims))
    fig.update_layout(title="parallel coordinates")
    return fig


def _against_params(done: list[TrialRow]) -> go.Figure:
    names = sorted({k for r in done for k in r.params}) or ["(none)"]
    cols = min(3, len(names))
    fig = make_subplots(rows=math.ceil(len(names) / cols), cols=cols, subplot_titles=names)
    for i, name in enumerate(names):
        values, labels = _numeric(done, name) if done else ([], None)
        x = [labels[int(v)] for v in values] if labels else values
        fig.add_scatter(x=x, y=[r.value for r in done], mode="markers", name=name,
                        showlegend=False, row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(title="objective against each parameter")
    return fig


def _params_text(r: TrialRow) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(r.params.items()))


def report_html(name: str, rows: list[TrialRow], maximize: bool, top: int = 10,
                fidelity: str | None = None) -> str:
    """One self-contained HTML page; every value from the record is escaped."""
    parts, first = [], True
    for fig in figures(rows, maximize, fidelity).values():
        parts.append(fig.to_html(full_html=False, include_plotlyjs=first))
        first = False
    best = ranked(rows, maximize)[:top]
    cells = "".join(
        f"<tr><td>{r.seq}</td><td>{r.value!r}</td><td>{html.escape(_params_text(r))}</td>"
        f"<td>{html.escape(r.node or '')}</td></tr>" for r in best)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    summary = ", ".join(f"{html.escape(k)} {v}" for k, v in sorted(counts.items()))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>parasearch "
            f"{html.escape(name)}</title></head><body><h1>search {html.escape(name)}</h1>"
            f"<p>{summary}</p><h2>top trials</h2><table border='1'><tr><th>trial</th>"
            f"<th>objective</th><th>parameters</th><th>node</th></tr>{cells}</table>"
            + "".join(parts) + "</body></html>")
