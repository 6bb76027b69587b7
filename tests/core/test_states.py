import pandas as pd

from core.states import ON_AIR_STATES, FlagStatus, State
from rules.flag import DECISIONS, STATUSES
from twin import lifecycle


def test_one_state_enum_everywhere():
    assert lifecycle.State is State
    assert [s.value for s in State] == ["planned", "site_secured", "approved", "under_construction",
                                        "power_connected", "on_air", "relocating", "decommissioned",
                                        "blocked"]
    assert ON_AIR_STATES == ("on_air", "relocating")


def test_members_compare_as_their_text_in_frames():
    states = pd.Series(["on_air", "planned", "relocating"])
    assert (states == State.ON_AIR).tolist() == [True, False, False]
    assert states.isin(ON_AIR_STATES).tolist() == [True, False, True]


def test_flag_statuses_and_the_cli_choices_agree():
    assert STATUSES == ("open", "confirmed", "dismissed", "resolved")
    assert all(type(s) is str for s in STATUSES)  # argparse shows them as typed
    assert DECISIONS == (FlagStatus.CONFIRMED, FlagStatus.DISMISSED)
