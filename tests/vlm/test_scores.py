from __future__ import annotations

import copy

from vlm_fixtures import Data

from selftok.vlm.scores import caption_correct, caption_scores


def test_true_captions_score_and_wrong_ones_do_not(data: Data) -> None:
    assert all(caption_correct(c, m) for c, m in zip(data.captions, data.metadata, strict=True))
    two = next(m for m in data.metadata if m["category"] == "two_objects")
    a, b = (o["shape"] for o in two["objects"])
    assert caption_correct(f"a photo of {'an' if b[0] in 'aeiou' else 'a'} {b} and {'an' if a[0] in 'aeiou' else 'a'} {a}", two)
    assert not caption_correct(f"a photo of {'an' if a[0] in 'aeiou' else 'a'} {a}", two)  # an object left out
    colored = next(m for m in data.metadata if m["category"] == "colors")
    wrong = copy.deepcopy(colored)
    wrong["objects"][0]["color"] = "red" if colored["objects"][0]["color"] != "red" else "blue"
    assert not caption_correct(colored["prompt"]["prompt"], wrong)
    assert not caption_correct("a zebra", colored)
    scores = caption_scores(data.captions[:8], data.metadata[:8], data.captions[:8])
    assert scores["caption_accuracy"] == scores["caption_exact"] == scores["caption_parsed"] == 1.0
