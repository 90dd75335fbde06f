"""The order the suite's tests start in, so that ``pytest -n N --dist worksteal`` ends together.

pytest-xdist's worksteal scheduler hands each worker one contiguous slice of the collected tests,
then lets an idle worker take the back half of a busy worker's queue. A long test that a worker
reaches late cannot be taken from it, and the run waits for it alone at the end. So the tests known
to be long (seconds measured on a 2-core machine; only their order matters) are dealt out first,
longest first, one to each worker's slice in turn; the rest keep their collected order after them.
Without xdist nothing is reordered. The order changes which worker runs a test and when, never
what a test does: every test is independent of the others (each has its own tmp_path, store and
servers). A test missing from ``LONG_TESTS`` (renamed, or new) only starts in its collected place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["LONG_TESTS", "TOGETHER", "cost", "deal"]

T = TypeVar("T")

# Node id (or the id before its ``[parameters]``) -> seconds it takes, roughly, in a loaded 2-core run.
LONG_TESTS: dict[str, float] = {
    "tests/test_lake_writers.py::test_four_killed_writers_and_a_maintainer_leave_every_generation_once": 50,
    "tests/test_spool_kill.py::test_a_reader_holding_the_store_for_60_seconds_stops_neither_listen_nor_harvest": 40,
    "tests/test_import_scale.py::test_200mb_import_stays_within_the_memory_limit": 20,
    "tests/test_spool_kill.py::test_listen_killed_at_random_moments_keeps_every_acknowledged_delivery_once": 18,
    "tests/test_harvest.py::test_harvest_killed_at_random_moments_ends_with_every_generation_stored_once": 18,
    "tests/test_lake_maintain.py::test_maintenance_beside_two_writers_loses_no_committed_row": 13,
    "tests/test_submit_races.py::test_submit_killed_at_random_moments_never_sends_a_line_twice_nor_loses_an_id": 12,
    "tests/test_lake_race.py::test_eight_writers_creating_a_new_postgresql_lake_at_once_all_push": 11,
    "tests/test_lake_race.py::test_eight_writers_creating_a_new_sqlite_lake_at_once_all_push": 10,
    "tests/test_spool_kill.py::test_harvest_killed_at_random_moments_stores_every_generation_once": 10,
    "tests/test_import_scale.py::test_import_killed_at_any_moment_loses_and_duplicates_nothing": 9,
    "tests/test_submit_races.py::test_two_submits_of_one_file_at_once_pay_once": 8,
    "tests/test_no_credential_in_data.py::test_after_a_webhook_run_the_webhook_id_is_in_no_stored_or_shipped_byte": 8,
    "tests/test_notebooks.py::test_every_notebook_runs_against_a_sandbox_store": 7,
    "tests/test_lake.py::test_views_stats_snapshot_and_export_commands_read_the_lake": 7,
    "tests/test_cli.py::test_import_into_a_held_store_waits_saying_who_holds_it_then_imports_whole": 7,
    "tests/test_listen.py::test_listener_killed_mid_load_keeps_every_acked_delivery": 7,
    "tests/test_listen.py::test_submit_with_webhook_id_and_listen_collect_a_run_without_polling": 6,
    "tests/test_fuzz_listen.py::test_no_body_crashes_the_listener_and_every_acknowledged_body_is_kept": 6,
    "tests/test_notebooks.py::test_notebook_plots_are_saved_as_png_when_asked": 5,
    "tests/test_notebook.py::test_a_writer_and_a_notebook_in_two_processes_never_fight_over_the_lock": 5,
    "tests/test_lake_secrets.py::test_a_password_in_the_user_part_is_masked": 5,
    "tests/test_lake_secrets.py::test_a_password_query_parameter_is_masked": 5,
    "tests/test_lake_secrets.py::test_an_sslpassword_query_parameter_is_masked": 5,
    "tests/test_lake_secrets.py::test_a_token_query_parameter_is_masked": 5,
    "tests/test_lake_secrets.py::test_access_key_and_secret_query_parameters_are_masked": 5,
    "tests/test_lake.py::test_import_with_a_lake_pushes_and_reading_commands_take_the_lake": 5,
    "tests/test_pii_linear.py::test_a_phone_number_after_65535_digit_runs_is_still_found": 5,
    "tests/test_fuzz_records.py::test_every_mutated_line_is_stored_or_rejected_with_a_reason": 5,
    "tests/test_fuzz_records.py::test_import_file_never_raises_and_explains_every_refusal": 5,
    "tests/test_api_types.py::test_the_store_and_the_python_rule_pick_the_same_id_and_fields": 5,
    "tests/test_submit_races.py::test_a_group_id_answered_while_another_holds_the_store_survives_a_kill": 4,
    "tests/test_submit_races.py::test_a_line_claimed_by_a_run_that_was_killed_is_reported_not_sent_again": 4,
    "tests/test_fuzz_records.py::test_a_wrong_type_in_every_field_of_every_shape_is_stored_or_rejected_with_a_reason": 4,
}

# Modules whose tests share a module-scoped fixture worth building once (a harvested store, eight
# filled stores): their tests are kept on one worker.
TOGETHER = frozenset({"tests/test_notebooks.py", "tests/test_lake_race.py"})


def cost(nodeid: str) -> float:
    """Seconds a test is known to take, 0 for one not in ``LONG_TESTS``."""
    known = LONG_TESTS.get(nodeid)
    if known is None and nodeid.endswith("]"):
        known = LONG_TESTS.get(nodeid.split("[", 1)[0])
    return known or 0.0


def _slices(n: int, workers: int) -> list[int]:
    """How many of ``n`` tests worksteal first gives each of ``workers`` (as xdist computes it)."""
    sizes = []
    for i in range(workers):
        size = n // (workers - i)
        sizes.append(size)
        n -= size
    return sizes


def deal(items: Sequence[T], costs: Sequence[float], workers: int, modules: Sequence[str] | None = None) -> list[T]:
    """``items`` reordered for ``workers`` consecutive slices (xdist's first split): the costly ones,
    longest first, dealt round-robin to the front of the slices, the others after them in their order.

    The items of a module in ``TOGETHER`` (``modules`` gives each item's) move as one, to one slice:
    they share a module-scoped fixture that each worker running one of them would build again.
    """
    units: list[list[int]] = []
    unit_of: dict[str, list[int]] = {}
    for i in range(len(items)):
        module = modules[i] if modules is not None else ""
        if module in TOGETHER:
            if module not in unit_of:
                unit_of[module] = []
                units.append(unit_of[module])
            unit_of[module].append(i)
        else:
            units.append([i])
    weight = [sum(costs[i] for i in unit) for unit in units]
    long_units = sorted((u for u in range(len(units)) if weight[u] > 0), key=lambda u: -weight[u])  # stable
    rest = [unit for u, unit in enumerate(units) if weight[u] <= 0][::-1]
    workers = max(1, workers)
    order: list[int] = []
    for worker, size in enumerate(_slices(len(items), workers)):
        start = len(order)
        for u in long_units[worker::workers]:
            order += units[u]
        while rest and len(order) - start < size:
            order += rest.pop()
    while rest:
        order += rest.pop()
    assert sorted(order) == list(range(len(items)))
    return [items[i] for i in order]
