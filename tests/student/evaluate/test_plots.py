import numpy as np

from sak.student.evaluate.plots import predictions_plot, render_map


def test_depth_prediction_shares_the_label_colour_scale():
    pred = np.array([[1.0, 2.0]], dtype=np.float32)
    _, kw_own = render_map("depth", pred)
    _, kw_shared = render_map("depth", pred, depth_max=8.0)
    assert kw_own["vmax"] == 2.0  # alone: its own maximum
    assert kw_shared["vmax"] == 8.0 and kw_shared["vmin"] == 0.0


def test_predictions_plot_writes_a_png(tmp_path):
    sample = {
        "image": np.zeros((8, 10, 3), np.float32),
        "labels": {"depth": np.full((8, 10), 4.0, np.float32), "semseg": np.zeros((8, 10), np.int64)},
        "preds": {"depth": np.full((8, 10), 2.0, np.float32), "semseg": np.ones((8, 10), np.int64)},
    }
    out = predictions_plot([sample, sample], tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
