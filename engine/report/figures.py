"""Plotly, in one place: the report's only import of it, the look every chart shares, the
JS bundle a page embeds and the JSON a page draws from.

Plotly because a latency report is read by zooming into a tail and hovering over a spike,
which static images cannot do, and its JS bundle embeds into one offline file. Plotly ships
no type information, so what passes through here is `Any`.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

__all__ = [
    "BLUE",
    "COLORWAY",
    "CYAN",
    "GREEN",
    "GREY",
    "PURPLE",
    "RED",
    "YELLOW",
    "go",
    "make_subplots",
    "plotly_js",
    "styled",
    "to_json",
    "vline",
]

# Paul Tol's "bright" scheme: distinguishable with the common colour-vision deficiencies.
BLUE, RED, GREEN, YELLOW, CYAN, PURPLE, GREY = (
    "#4477aa",
    "#ee6677",
    "#228833",
    "#ccbb44",
    "#66ccee",
    "#aa3377",
    "#bbbbbb",
)
COLORWAY = [BLUE, RED, GREEN, YELLOW, CYAN, PURPLE, GREY]


def plotly_js() -> str:
    """Plotly's JS bundle (about 4.8 MB), for a page's head: the page never fetches it."""
    return str(get_plotlyjs())


def to_json(value: Any) -> str:
    """Figures and settings as JSON, the way plotly.js reads them."""
    return str(pio.json.to_json_plotly(value))


def styled(fig: Any, height: int, **extra: Any) -> Any:
    """One look for every chart; an empty template keeps each figure's JSON small."""
    base: dict[str, Any] = {
        "template": go.layout.Template(),
        "height": height,
        "colorway": COLORWAY,
        "font": {
            "family": "system-ui, -apple-system, Segoe UI, sans-serif",
            "size": 12,
            "color": "#222",
        },
        "margin": {"l": 60, "r": 30, "t": 70, "b": 45},
        "plot_bgcolor": "#fff",
        "paper_bgcolor": "#fff",
        "hoverlabel": {"namelength": -1},
        "bargap": 0.05,
        "legend": {
            "orientation": "h",
            "yref": "container",
            "y": 0.995,
            "yanchor": "top",
            "x": 0,
            "xanchor": "left",
        },
    }
    fig.update_layout(**(base | extra))
    fig.update_xaxes(gridcolor="#eee", zeroline=False, showline=True, linecolor="#999")
    fig.update_yaxes(gridcolor="#eee", zeroline=False, showline=True, linecolor="#999")
    for note in fig.layout.annotations:  # the subplot titles
        note.update(font={"size": 13})
    return fig


def vline(
    fig: Any,
    x: float,
    top: float,
    name: str,
    color: str,
    row: int,
    col: int,
    dash: str = "dash",
    first: bool = True,
) -> None:
    """A marked value as a trace, not an annotation: named in the legend (click to hide),
    hoverable, and never a label overlapping the data."""
    fig.add_trace(
        go.Scatter(
            x=[x, x],
            y=[0, top],
            mode="lines",
            name=name,
            legendgroup=name,
            showlegend=first,
            line={"color": color, "dash": dash, "width": 1.5},
            hovertemplate=f"{name}<extra></extra>",
        ),
        row=row,
        col=col,
    )
