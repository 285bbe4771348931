"""Filters: ROUGE-L near-duplicates on the shared word tokenizer, exact duplicates, and the cheap task checks."""

from __future__ import annotations

import pytest

from tunesmith.config import SelfInstructConfig
from tunesmith.datagen.filters import DuplicateFilter, RougeFilter, count_words, instruction_problem
from tunesmith.datagen.parsing import Task


class TestRougeFilter:
    def test_keeps_novel_instruction_and_drops_paraphrase_above_threshold(self):
        from rouge_score import rouge_scorer

        kept = "Give three tips for staying healthy during the winter months."
        paraphrase = "Give three tips for staying healthy during winter months."
        novel = "Translate the following sentence into French."
        scorer = rouge_scorer.RougeScorer(["rougeL"])
        assert scorer.score(kept, paraphrase)["rougeL"].fmeasure > 0.7
        assert scorer.score(kept, novel)["rougeL"].fmeasure < 0.7
        f = RougeFilter(0.7)
        f.add(kept)
        assert f.is_near_duplicate(paraphrase)
        assert not f.is_near_duplicate(novel)
        score, match = f.most_similar(paraphrase)
        assert match == kept and score == pytest.approx(scorer.score(kept, paraphrase)["rougeL"].fmeasure)

    def test_threshold_is_inclusive_and_words_in_any_script_count(self):
        f = RougeFilter(0.7)
        f.add("Опиши погоду в Москве зимой")
        assert f.is_near_duplicate("Опиши погоду в Москве летом")  # 4 of 5 words: F1 = 0.8
        assert not f.is_near_duplicate("Назови три столицы Европы")

    @pytest.mark.parametrize("instruction, problem", [
        ("Sort.", "too_short"),
        ("Explain " + "very " * 200 + "slowly.", "too_long"),
        ("Describe the image below.", "unsupported"),
        ("Compose music for a wedding.", "unsupported"),
        ("Summarize the attached file.", "unsupported"),
        ("List three prime numbers above fifty.", None),
    ])
    def test_instruction_problem(self, instruction, problem):
        assert instruction_problem(Task(instruction, "", "x"), SelfInstructConfig()) == problem

    @pytest.mark.parametrize("instruction, problem", [
        ("请列出三种保持健康的方法。", None),  # one "word" to str.split(): it used to be dropped as too short
        ("日本の首都について簡単に説明してください。", None),
        ("อธิบายการทำงานของหม้อต้มน้ำ", None),
        ("排序。", "too_short"),
        ("解释" * 80, "too_long"),
    ])
    def test_scripts_without_spaces_are_counted_by_character(self, instruction, problem):
        assert instruction_problem(Task(instruction, "", "x"), SelfInstructConfig()) == problem

    @pytest.mark.parametrize("instruction", [
        "List three prime numbers above fifty.", "Sort 3, 1, 2.", "Rewrite: don't-stop (now)!", "x_y z",
        "Опиши погоду в Москве зимой", "Explain " + "very " * 200 + "slowly.", "  Name   two\tcolours \n",
    ])
    def test_spaced_scripts_count_as_before(self, instruction):
        assert count_words(instruction) == len(instruction.split())


    def test_near_duplicate_chinese_instructions_are_caught(self):
        # Chinese has no spaces: one "word" per sentence would make these two share nothing at all
        f = RougeFilter(0.7)
        f.add("请列出三种保持健康的方法。")
        assert f.is_near_duplicate("请列出三种保持身体健康的方法。")  # LCS 12 of 12 and 14 tokens: F1 0.92
        assert not f.is_near_duplicate("把这句话翻译成法语。")


class TestDuplicateFilter:
    def test_exact_after_normalizing_and_near_by_rouge(self):
        f = DuplicateFilter(0.7, ["Name three colours."])
        assert f.is_duplicate("  name THREE   colours. ") and not f.is_duplicate("Name three bright colours.")
        assert f.is_similar("Name three bright colours.") and not f.is_similar("Add 2 and 3.")
        f.add("Add 2 and 3.")
        assert f.is_duplicate("add 2 and 3.") and f.is_similar("Add 2 and 4.")
