"""sak-train predict's pieces: how an image is fitted to the student's input, how a file says which fit its run
used (files exported before it was recorded: pad), and the PNGs of one image."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from sak.student.evaluate.predict import Predictor, colourize, fit_image, image_files, predict_image
from sak.student.model.io import CONFIG_KEY, FORMAT, FORMAT_KEY, load_student, read_input_fit, save_student


def test_fit_pads_a_small_image_and_scales_a_large_one_down_keeping_its_aspect() -> None:
    x, box = fit_image(torch.full((3, 20, 30), 0.25), (32, 48), "pad")
    assert x.shape == (3, 32, 48) and box == (6, 9, 20, 30)
    assert torch.all(x[:, 6:26, 9:39] == 0.25) and not torch.any(x[:, 0, :] == 0.25)  # centred, mean-colour border
    x, box = fit_image(torch.rand(3, 64, 48), (32, 48), "pad")
    assert x.shape == (3, 32, 48) and box == (0, 12, 32, 24)  # half size: 32x24, centred
    x, box = fit_image(torch.rand(3, 64, 48), (32, 48), "resize")
    assert x.shape == (3, 32, 48) and box == (0, 0, 32, 48)


def test_an_exported_file_records_its_fit_and_older_files_read_as_pad(tiny_student, tmp_path) -> None:
    assert read_input_fit(save_student(tmp_path / "pad.safetensors", tiny_student)) == "pad"
    assert read_input_fit(save_student(tmp_path / "r.safetensors", tiny_student, fit="resize")) == "resize"
    old = tmp_path / "old.safetensors"  # as save_student wrote it before issue 16
    save_file({k: v.contiguous() for k, v in tiny_student.state_dict().items()}, str(old),
              metadata={CONFIG_KEY: tiny_student.cfg.to_json(), FORMAT_KEY: FORMAT})
    assert read_input_fit(old) == "pad" and load_student(old).cfg == tiny_student.cfg


def test_one_image_gives_one_map_per_task_at_its_own_size(tiny_student, tmp_path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    maps = predict_image(Predictor(tiny_student.eval(), "pad", "mem", None), rgb)
    assert sorted(maps) == sorted(tiny_student.cfg.task_names)
    for task, value in maps.items():
        img = colourize(task, value)
        assert img.shape == (24, 40, 3) and img.dtype == np.uint8, task
    Image.fromarray(rgb).save(tmp_path / "b.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(rgb).save(tmp_path / "sub" / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    assert image_files([tmp_path]) == [tmp_path / "b.png", tmp_path / "sub" / "a.jpg"]
