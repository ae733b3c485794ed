"""The report checks the paper's claims on the measured figures, and says plainly when one fails."""

from dcm.reporting.tables import research_bar


def _metrics(dcm4=0.80, pcm4=0.78, lcm4=0.75, teacher=0.815, speedup=25.0, dcm_step=0.0101, lcm_step=0.0100,
             dcm2=0.78, undistilled4=0.70):
    return {
        "teacher@50": {"total": teacher, "forward_passes": 100},
        "undistilled@4": {"total": undistilled4},
        "dcm@2": {"total": dcm2},
        "lcm@4": {"total": lcm4, "per_step_s": lcm_step},
        "pcm@4": {"total": pcm4, "per_step_s": lcm_step},
        "dcm@4": {"total": dcm4, "per_step_s": dcm_step, "speedup_vs_teacher": speedup, "forward_passes": 4},
    }


def test_every_claim_holds_on_figures_that_meet_it():
    rows = research_bar(_metrics(), "teacher@50")
    assert [r[0] for r in rows] == ["4 steps: Total DCM >= PCM >= LCM",
                                    "DCM@4 Total within 0.02 of the teacher's (teacher@50)",
                                    "DCM@2 Total within 0.05 of the teacher's (teacher@50)",
                                    "4 steps: DCM beats the teacher's own 4-step samples (distillation "
                                    "adds something)",
                                    "DCM@4 speed-up at least 90% of its cut in transformer calls (100 -> 4: 25.0x)",
                                    "4 steps: DCM per-step cost within 2% of LCM's"]
    assert all(r[2] == "yes" for r in rows)


def test_each_claim_fails_on_its_own_figure():
    def failing(**kw):
        return [r[0] for r in research_bar(_metrics(**kw), "teacher@50") if r[2] != "yes"]

    assert failing(pcm4=0.70) == ["4 steps: Total DCM >= PCM >= LCM"]
    assert failing(teacher=0.8201) == ["DCM@4 Total within 0.02 of the teacher's (teacher@50)"]
    assert failing(dcm2=0.764) == ["DCM@2 Total within 0.05 of the teacher's (teacher@50)"]
    assert failing(undistilled4=0.80) == ["4 steps: DCM beats the teacher's own 4-step samples "
                                          "(distillation adds something)"]
    assert failing(speedup=22.4) == ["DCM@4 speed-up at least 90% of its cut in transformer calls (100 -> 4: 25.0x)"]
    assert failing(dcm_step=0.0103) == ["4 steps: DCM per-step cost within 2% of LCM's"]


def test_claims_about_methods_not_sampled_are_skipped():
    assert research_bar({"teacher@50": {"total": 0.8}, "dcm@4": {"total": 0.78}}, "teacher@50") == [
        ["DCM@4 Total within 0.02 of the teacher's (teacher@50)", "0.7800 vs 0.8000 (gap +0.0200)", "yes"]]
