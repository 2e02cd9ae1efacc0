"""Threads sharing one bundle and the caller's PIL images: every call answers, one bad input gets the prior."""

import io
import json
import threading
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from natix.cli import cli
from natix.serve import load_bundle


def _run_threads(n: int, work) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def body():
        start.wait()
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever a thread raised
            errors.append(exc)

    threads = [threading.Thread(target=body) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_four_threads_sharing_pil_images_and_one_bad_input_all_get_answers(served):
    from PIL import Image

    bundle = load_bundle(served.plain)
    paths = served.paths
    expected = bundle.roadwork_probability(paths)
    truncated = Path(paths[0]).read_bytes()
    truncated = truncated[: len(truncated) // 2]
    for _ in range(3):  # fresh, lazily opened images each round: the first load() is the racy one
        images = [Image.open(p) for p in paths] + [Image.open(io.BytesIO(truncated))]
        answers: list[tuple[np.ndarray, np.ndarray]] = []

        def work(images=images, answers=answers):
            answers.append(bundle.roadwork_probability(images, batch_size=3, return_stage=True))

        assert _run_threads(4, work) == []
        assert len(answers) == 4
        for prob, stage in answers:
            np.testing.assert_allclose(prob[:-1], expected, rtol=0, atol=1e-9)  # no good image got the prior
            assert prob[-1] == bundle.prior and stage[-1] == -1 and (stage[:-1] == 0).all()


def test_four_threads_sharing_one_bundle_get_the_answers_of_one(served):
    bundle = load_bundle(served.plain)
    expected = bundle.roadwork_probability(served.paths)
    answers: list[np.ndarray] = []

    def work():
        for _ in range(5):
            answers.append(bundle.roadwork_probability(served.paths, batch_size=2))

    assert _run_threads(4, work) == []
    for prob in answers:  # the featurizer's reused buffers are not overwritten by another thread
        np.testing.assert_allclose(prob, expected, rtol=0, atol=1e-9)


def test_a_pil_image_that_fails_in_any_way_gets_the_prior(served):
    from PIL import Image

    class Broken(Image.Image):
        def load(self):
            raise AttributeError("'NoneType' object has no attribute 'close'")  # what a racing load() raised

    broken = Broken()
    broken._size, broken._mode = (8, 8), "RGB"
    bundle = load_bundle(served.plain)
    prob = bundle.roadwork_probability([broken, served.paths[0]])
    assert prob[0] == bundle.prior
    np.testing.assert_allclose(prob[1], bundle.roadwork_probability(served.paths[:1])[0], rtol=0, atol=1e-12)


def test_predict_json_says_which_answers_are_the_prior(served, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    r = CliRunner().invoke(cli, ["predict", str(served.plain), served.paths[0], str(bad), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["prior"] for row in rows] == [False, True]
    assert rows[1]["probability"] == load_bundle(served.plain).prior
    text = CliRunner().invoke(cli, ["predict", str(served.plain), served.paths[0], str(bad)])
    assert text.exit_code == 0 and "(prior" in text.stdout.splitlines()[1] and "(prior" not in text.stdout.splitlines()[0]
