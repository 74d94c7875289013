"""The sam3 output read by the SAM3 package's own training data loaders (CPU, no weights).

sam3 0.1.4's COCO_FROM_JSON (the stage-1 loader of its configs), Sam3ImageDataset with its
DecodeRle transform, and VideoGroundingDataset with SAM3_VEVAL_API_FROM_JSON_NP (the only
loader in the release that reads a YTVIS-style `videos[].file_names` file; it needs
`video_np_pairs`). Runs in .venvs/test-sam3 (`make test-sam3`, part of `make test`):
    .venvs/test-sam3/bin/python -m pytest -q -m sam3_loaders tests/unit/test_sam3_loaders.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from services.exporter.synthetic import make_replay_buffer
from tests.unit.test_sam3_sets import LENGTHS, OPTIONS, PHRASE, H, W, run_export

if os.environ.get("MASKMESH_REQUIRE_SAM3"):  # make test-sam3: a broken install fails, never skips
    import sam3.train.data.coco_json_loaders as sam3_loaders
else:
    sam3_loaders = pytest.importorskip(
        "sam3.train.data.coco_json_loaders", reason="needs sam3 + torch: make test-sam3"
    )
pytestmark = [
    pytest.mark.sam3_loaders,
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, np.ndarray]]:
    d = tmp_path_factory.mktemp("sam3l")
    src = make_replay_buffer(d / "src.zarr", LENGTHS, H, W)
    sent = run_export(d / "out", src, OPTIONS)
    return d / "out" / "sam3", sent


@pytest.mark.parametrize("split", ["train", "test"])
def test_coco_from_json_counts_and_query_text(sets, split: str) -> None:
    root, _ = sets
    ann = root / "stage1" / split / "_annotations.coco.json"
    coco = COCO(str(ann))
    loader = sam3_loaders.COCO_FROM_JSON(str(ann), include_negatives=True)
    ids = loader.getDatapointIds()
    assert len(ids) == len(coco.getImgIds())  # one category chunk
    n_anns, n_neg = 0, 0
    for i in ids:
        queries, anns = loader.loadQueriesAndAnnotationsFromDatapoint(i)
        assert [q["query_text"] for q in queries] == [PHRASE]
        n_anns += len(anns)
        n_neg += not anns
        (img,) = loader.loadImagesFromDatapoint(i)
        assert (root / "stage1" / split / img["file_name"]).is_file()
    assert n_anns == len(coco.getAnnIds())
    assert n_neg == sum(1 for i in coco.getImgIds() if not coco.getAnnIds(imgIds=[i]))


def test_image_dataset_decodes_the_exported_mask(sets) -> None:
    from sam3.train.data.sam3_image_dataset import Sam3ImageDataset
    from sam3.train.transforms.segmentation import DecodeRle

    root, sent = sets
    folder = root / "stage1" / "train"
    doc = json.loads((folder / "_annotations.coco.json").read_text())
    ds = Sam3ImageDataset(img_folder=str(folder), ann_file=str(folder / "_annotations.coco.json"),
                          transforms=[DecodeRle()], max_ann_per_img=100, multiplier=1,
                          training=False, load_segmentation=True)  # fmt: skip
    assert len(ds) == len(doc["images"])
    with_ann = sorted({a["image_id"] for a in doc["annotations"]})
    index = with_ann[len(with_ann) // 2] - 1  # image ids are 1.. in order
    dp = ds[index]
    img_meta = doc["images"][index]
    (image,) = dp.images
    assert image.size == (H, W) and len(image.objects) == 1
    decoded = image.objects[0].segment.numpy().astype(bool)
    assert np.array_equal(decoded, sent[img_meta["episode"]][0, img_meta["frame"]])
    assert dp.find_queries[0].query_text == PHRASE


@pytest.mark.parametrize("split", ["train", "val"])
def test_video_dataset_reads_every_video_at_its_length(sets, split: str) -> None:
    from sam3.train.data.coco_json_loaders import SAM3_VEVAL_API_FROM_JSON_NP
    from sam3.train.data.sam3_video_dataset import VideoGroundingDataset

    root, _ = sets
    folder = root / "stage2" / split
    doc = json.loads((folder / "annotations.json").read_text())
    ds = VideoGroundingDataset(img_folder=str(folder), ann_file=str(folder / "annotations.json"),
                               coco_json_loader=SAM3_VEVAL_API_FROM_JSON_NP, transforms=[],
                               max_ann_per_img=100, multiplier=1, training=False,
                               load_segmentation=True)  # fmt: skip
    assert len(ds) == len(doc["videos"]) > 0
    for i, video in enumerate(doc["videos"]):
        dp = ds[i]
        assert len(dp.images) == video["length"] == LENGTHS[video["episode"]]
        assert all(im.size == (H, W) for im in dp.images)
        assert {q.query_text for q in dp.find_queries} == {PHRASE}
        assert len(dp.find_queries) == video["length"]  # one query per frame and phrase
