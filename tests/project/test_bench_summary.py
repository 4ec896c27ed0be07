"""benchmarks/run.py's closing summary: a missed target whose value is a text (a verdict, a
version) prints as text instead of crashing the run after every figure was measured (issue 31)."""

from benchmarks.common import Report
from benchmarks.run import summary_lines


def test_missed_targets_print_numbers_and_texts_alike():
    report = Report("quick")
    report.add("labeling", "prefix reuse speed-up", 1.5312, "x", target=">= 2", met=False)
    report.add("gguf", "server verdict", "crashed on AMX", target="answers", met=False)
    report.add("engine", "batches", 12, target="<= 8", met=False)
    report.add("engine", "met one", 3.0, "x", target=">= 2", met=True)  # met: not in the summary
    report.add("engine", "untargeted", "n/a")
    report.skip("ray", "ray is not installed")
    assert summary_lines(report) == [
        "  target missed: labeling: prefix reuse speed-up = 1.53 x (target >= 2)",
        "  target missed: gguf: server verdict = crashed on AMX (target answers)",
        "  target missed: engine: batches = 12 (target <= 8)",
        "  not measured: ray: ray is not installed",
    ]


def test_a_missed_target_without_a_value_or_unit_still_prints():
    report = Report("quick")
    report.add("openai", "flag", True, target="False", met=False)
    report.add("openai", "nothing", None, target="a number", met=False)
    assert summary_lines(report) == ["  target missed: openai: flag = True (target False)",
                                     "  target missed: openai: nothing = None (target a number)"]
