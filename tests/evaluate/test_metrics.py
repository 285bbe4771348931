"""Text metrics on hand-worked examples (English, Chinese and Japanese), bootstrap intervals, error categories."""

from __future__ import annotations

import pytest

from tunesmith.evaluate import metrics as ev


class TestNormalization:
    @pytest.mark.parametrize("text, expected", [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple,\tA pear.\n", "apple pear"),
        ("Theory of a thing", "theory of thing"),  # only whole-word articles go
        ("", ""),
    ])
    def test_squad_normalization(self, text, expected):
        assert ev.normalize_answer(text) == expected

    def test_exact_match_raw_only_ignores_surrounding_whitespace(self):
        assert ev.exact_match("  Paris\n", "Paris") == 100.0
        assert ev.exact_match("paris", "Paris") == 0.0
        assert ev.exact_match("Paris.", "Paris") == 0.0

    def test_exact_match_normalized_ignores_case_punctuation_articles(self):
        assert ev.exact_match("the  PARIS.", "Paris", normalized=True) == 100.0
        assert ev.exact_match("Lyon", "Paris", normalized=True) == 0.0


class TestTokenF1:
    def test_hand_worked(self):
        # pred "the cat sat on a mat" -> [cat, sat, on, mat]; ref "A cat sat." -> [cat, sat]
        # shared 2: precision 2/4, recall 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
        assert ev.token_f1("the cat sat on a mat", "A cat sat.") == pytest.approx(200 / 3)

    def test_counts_repeated_words_once_per_occurrence(self):
        # pred [red, red, red], ref [red, blue]: shared min(3,1)=1 -> P 1/3, R 1/2, F1 = 0.4
        assert ev.token_f1("red red red", "red blue") == pytest.approx(40.0)

    @pytest.mark.parametrize("pred, ref, expected", [("", "", 100.0), ("", "x", 0.0), ("x", "", 0.0),
                                                     ("a b", "c d", 0.0)])
    def test_edge_cases(self, pred, ref, expected):
        assert ev.token_f1(pred, ref) == expected


class TestRougeL:
    def test_hand_worked(self):
        # LCS of [the, cat, sat, on, the, mat] and [the, cat, is, on, the, mat] is 5 words: P = R = 5/6
        assert ev.rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(500 / 6)

    def test_order_matters(self):
        # LCS of [a, b, c, d] and [d, c, b, a] is 1 word: P = R = 1/4
        assert ev.rouge_l("a b c d", "d c b a") == pytest.approx(25.0)

    def test_non_ascii_words_count(self):
        assert ev.rouge_l("Größe überall", "größe überall") == pytest.approx(100.0)


class TestBleuChrf:
    def test_identical_and_disjoint(self):
        text = "the quick brown fox jumps over the lazy dog"
        assert ev.sentence_bleu(text, text) == pytest.approx(100.0)
        assert ev.sentence_chrf(text, text) == pytest.approx(100.0)
        assert ev.sentence_bleu("zzz qqq", text) < 1.0

    def test_example_metrics_has_every_metric(self):
        assert set(ev.example_metrics("a", "a")) == set(ev.METRICS)

    def test_corpus_bleu_pools_counts(self):
        hyps, refs = ["the cat sat on the mat", "a dog ran"], ["the cat sat on the mat", "a dog ran"]
        assert ev.corpus_scores(hyps, refs)["bleu"] == pytest.approx(100.0)


class TestBootstrap:
    values = [0.0, 10.0, 20.0, 90.0, 100.0, 35.0, 50.0, 5.0]

    def test_contains_the_mean_and_is_deterministic(self):
        mean = sum(self.values) / len(self.values)
        low, high = ev.bootstrap_interval(self.values, samples=500, seed=3)
        assert low < mean < high
        assert (low, high) == ev.bootstrap_interval(self.values, samples=500, seed=3)
        assert (low, high) != ev.bootstrap_interval(self.values, samples=500, seed=4)

    def test_more_data_gives_a_narrower_interval(self):
        low1, high1 = ev.bootstrap_interval(self.values, seed=0)
        low2, high2 = ev.bootstrap_interval(self.values * 20, seed=0)
        assert high2 - low2 < high1 - low1

    def test_summary(self):
        summary = ev.summarize_metrics([{"rouge_l": v} for v in self.values], samples=200, seed=0)
        assert summary["rouge_l"]["mean"] == pytest.approx(38.75)
        assert summary["rouge_l"]["low"] < 38.75 < summary["rouge_l"]["high"]


class TestErrorCategories:
    def test_repetition_share(self):
        # 4-gram "we will go now" occurs twice: all 8 words are covered
        assert ev.repetition_share("we will go now we will go now") == 1.0
        assert ev.repetition_share("The capital of France is Paris, a city on the Seine.") == 0.0

    def test_looping_answer_is_repetitive_but_a_repeated_phrase_is_not(self):
        assert ev.is_repetitive("I am a bot. " * 6)
        assert not ev.is_repetitive("Press the red button, then wait. If the light stays on, press the red "
                                    "button again and call support at any time of day or night.")

    def test_flags_and_shares(self):
        flags = [ev.error_flags("", "stop"), ev.error_flags("ok", "length"), ev.error_flags("ok", "stop"),
                 ev.error_flags("la la la la la la la", "length")]
        assert flags[0] == {"empty": True, "length": False, "repetitive": False}
        assert ev.error_shares(flags) == {"empty": 0.25, "length": 0.5, "repetitive": 0.25}


class TestEveryScript:
    """Chinese and Japanese have no spaces between words: scored by character, a nearly right answer earns
    most of the credit and an unrelated one almost none (rouge-score's own tokenizer scores both as empty)."""

    CASES = [  # (reference, a close answer, an unrelated one)
        ("北京是中华人民共和国的首都，位于华北平原。", "北京是中华人民共和国的首都，位于华北。",
         "今天天气很好，我们去公园散步吧。"),
        ("東京は日本の首都であり、世界最大の都市です。", "東京は日本の首都で、世界最大の都市です。",
         "雨が降るかもしれない。"),
    ]

    @pytest.mark.parametrize("reference, close, unrelated", CASES)
    @pytest.mark.parametrize("metric", [ev.rouge_l, ev.token_f1])
    def test_close_answer_scores_high_and_unrelated_low(self, metric, reference, close, unrelated):
        assert metric(close, reference) > 50
        assert metric(unrelated, reference) < 10

    def test_characters_are_the_words(self):
        # the answer is 4 of the reference's 5 characters, in order: P = 4/4, R = 4/5 for both metrics
        assert ev.token_f1("东京首都", "东京是首都") == pytest.approx(2 * 1.0 * 0.8 / 1.8 * 100)
        assert ev.rouge_l("东京首都", "东京是首都") == pytest.approx(2 * 1.0 * 0.8 / 1.8 * 100)

    def test_mixed_script_answer(self):
        # the Latin word stays one word, the kanji split: [tokyo, 是, 首, 都] vs [tokyo, 是, 日, 本, 首, 都]
        assert ev.token_f1("Tokyo是首都", "Tokyo 是日本首都") == pytest.approx(2 * 1.0 * (4 / 6) / (1 + 4 / 6) * 100)

    def test_english_words_are_still_whitespace_words(self):
        assert ev.token_f1("The cat-sat, on a mat!", "the catsat on mat") == pytest.approx(100.0)


SIGN_OFF = "Anything else? Larkspur Support is happy to help."
PRODUCTS = [("Wren", "kettle", 39, 2200), ("Heron", "blender", 89, 1200), ("Finch", "toaster", 45, 900),
            ("Swift", "espresso machine", 329, 1450), ("Gannet", "toaster oven", 149, 1800),
            ("Plover", "air fryer", 119, 1700), ("Osprey", "rice cooker", 79, 650), ("Curlew", "juicer", 99, 400),
            ("Robin", "milk frother", 49, 500), ("Linnet", "hand blender", 42, 700)]
"""A support desk in miniature (examples/larkspur_support.jsonl): 20 answers, each with the same sign-off and one
of two phrasings; a product's name is in 2 of them, few enough (10% of 20) to be distinctive."""


def _support_set():
    questions, references = [], []
    for name, kind, price, watts in PRODUCTS:
        questions += [f"How much does the {name} {kind} cost?", f"How many watts does the {name} {kind} use?"]
        references += [f"The Larkspur {name} {kind} costs {price} euros. {SIGN_OFF}",
                       f"The {name} {kind} is rated at {watts} watts. {SIGN_OFF}"]
    return questions, references


class TestKeyFactRecall:
    """Key-fact recall counts the words that set a reference apart, so the sign-off and the phrasing of a
    question type earn nothing and a swapped fact costs everything ROUGE-L still rewards."""

    def keys(self, with_questions=True):
        questions, references = _support_set()
        return references, ev.distinctive_words(references, questions if with_questions else None)

    def test_swapped_fact_keeps_rouge_but_not_recall(self):
        references, keys = self.keys()
        wren_watts = references[1]  # "The Wren kettle is rated at 2200 watts. Anything else? ..."
        for swapped in (wren_watts.replace("2200", "1450"),  # right name, another product's number
                        references[7]):  # another product's whole answer: Swift, 1450 watts
            assert ev.key_fact_recall(swapped, keys[1]) < 30
            assert ev.rouge_l(swapped, wren_watts) > 70

    def test_right_fact_scores_100_even_without_the_boilerplate(self):
        references, keys = self.keys()
        assert keys[1] == {"2200"}  # "wren kettle" is in the question; "rated at ... watts" in 10 of 20 answers
        assert ev.key_fact_recall(references[1], keys[1]) == 100.0
        assert ev.key_fact_recall("2200 watts.", keys[1]) == 100.0
        assert ev.rouge_l("2200 watts.", references[1]) < 30

    def test_empty_answer_scores_0(self):
        references, keys = self.keys()
        assert ev.key_fact_recall("", keys[0]) == 0.0
        assert ev.key_fact_recall("   \n", keys[0]) == 0.0

    def test_question_words_do_not_count(self):
        # without the questions, echoing "Wren kettle" from the question would earn 2 of the 3 key words
        references, keys = self.keys(with_questions=False)
        assert keys[1] == {"wren", "kettle", "2200"}
        assert ev.key_fact_recall(references[1].replace("2200", "1450"), keys[1]) == pytest.approx(200 / 3)

    def test_toy_set_keeps_numbers_and_words_few_references_share(self):
        # 20 distinct references, max_share 0.1: a word in at most 2 of them is distinctive, one in 3 is not;
        # numbers always are, however common
        references = ([f"Item {i} is in the red box {i % 2}." for i in range(3)]  # red: 3 references
                      + [f"Item {i} is in the blue box {i % 2}." for i in range(3, 5)]  # blue: 2
                      + [f"Item {i} is in box {i % 2}." for i in range(5, 20)])
        keys = ev.distinctive_words(references)
        assert keys[0] == {"0"} and keys[3] == {"3", "1", "blue"} and keys[19] == {"19", "1"}
        assert ev.distinctive_words(references, max_share=0.15)[0] == {"0", "red"}  # now 3 of 20 is few enough

    def test_identical_references_count_once(self):
        # two distinct references: a word in one of them is distinctive, however often that one repeats
        keys = ev.distinctive_words(["The Wren is slate. Bye.", "The Wren is slate. Bye.", "The Finch is red. Bye."])
        assert keys == [{"wren", "slate"}, {"wren", "slate"}, {"finch", "red"}]

    def test_fallbacks_leave_every_reference_something_to_recall(self):
        # all words common: the rarest ("yes", in 2 of 3) are key; a question holding every key word keeps them
        keys = ev.distinctive_words(["Yes. Happy to help.", "No. Happy to help.", "Yes, it is. Happy to help."])
        assert keys[0] == {"yes"}
        assert ev.distinctive_words(["Slate.", "Cream."], ["Slate or red?", "Cream or blue?"]) == [{"slate"},
                                                                                                  {"cream"}]
        assert ev.distinctive_words(["The cat sat."]) == [{"the", "cat", "sat"}]  # a reference alone: all key

    def test_no_key_words_only_for_an_empty_reference(self):
        assert ev.distinctive_words(["", "Paris."]) == [set(), {"paris"}]
        assert ev.key_fact_recall("", set()) == 100.0 and ev.key_fact_recall("Paris", set()) == 0.0

    def test_chinese_references_are_compared_by_character(self):
        references = ["鹪鹩水壶的功率是2200瓦。", "雨燕咖啡机的功率是1450瓦。", "苍鹭搅拌机的功率是1200瓦。"]
        keys = ev.distinctive_words(references)
        # the shared characters 的功率是瓦 drop out, and 机 (in two of the three); names and numbers stay
        assert keys[0] == {"鹪", "鹩", "水", "壶", "2200"} and keys[1] == {"雨", "燕", "咖", "啡", "1450"}
        asked = ev.distinctive_words(references, ["鹪鹩水壶的功率是多少？", "", ""])
        assert asked[0] == {"2200"}
        assert ev.key_fact_recall("功率是2200瓦。", asked[0]) == 100.0
        assert ev.key_fact_recall("鹪鹩水壶的功率是1450瓦。", asked[0]) == 0.0
        assert ev.rouge_l("鹪鹩水壶的功率是1450瓦。", references[0]) > 70

    def test_example_metrics_lead_with_it(self):
        scores = ev.example_metrics("The Wren is red.", "The Wren is slate.", key_words={"slate"})
        assert list(scores)[0] == "key_fact_recall" and scores["key_fact_recall"] == 0.0
        # without key words the reference stands alone, so every word of it counts: 3 of 4
        assert ev.example_metrics("The Wren is red.", "The Wren is slate.")["key_fact_recall"] == 75.0
