"""The shared bench plumbing: table rendering, the one atomic writer, the image/error grid."""
import numpy as np
import pytest

from medrecon.bench.figures import draw_image_errors, pyplot, save_png
from medrecon.bench.tables import render_table, write_text


def test_render_table_pads_columns():
    head, body = ["solver", "NFE"], [["ddim", "5"], ["dpm-solver++", "10"]]
    assert render_table(head, body).splitlines() == ["solver        NFE", "ddim            5", "dpm-solver++   10"]
    assert render_table(head, body, markdown=True).splitlines() == [
        "| solver       | NFE |", "|--------------|-----|", "| ddim         | 5   |", "| dpm-solver++ | 10  |"]


def test_writer_replaces_whole_files_and_leaves_no_temp(tmp_path):
    dest = tmp_path / "bench.json"
    write_text(dest, "old")
    write_text(dest, "new")
    assert dest.read_text() == "new"

    class CutFigure:  # a figure whose PNG writing stops half way
        def savefig(self, tmp, **kwargs):
            open(tmp, "w").write("half")
            raise RuntimeError("cut")

    with pytest.raises(RuntimeError, match="cut"):
        save_png(CutFigure(), dest, dpi=10)
    assert dest.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["bench.json"]


def test_image_error_grid(tmp_path):
    plt = pyplot()
    ref = np.linspace(0, 1, 16).reshape(4, 4)
    fig, axes = plt.subplots(2, 3, squeeze=False)
    draw_image_errors(axes[0], axes[1], ref, [("a", ref + 0.1), ("skipped", None)])
    assert axes[0][0].get_title() == "reference" and axes[0][1].get_title() == "a"
    assert not axes[0][2].images and not axes[1][2].images  # None leaves its column blank
    err = axes[1][1].images[0]
    assert np.allclose(err.get_array(), 0.1) and err.get_clim() == (0, 0.2)  # |error|, 0-20% of the max
    assert not any(ax.axison for ax in (*axes[0], *axes[1]))
    assert save_png(fig, tmp_path / "grid.png", dpi=40).stat().st_size > 0
    plt.close(fig)
