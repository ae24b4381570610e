"""Run settings: ParallelRunConfig's defaults, accepted values and refusals with clear messages."""

from __future__ import annotations

import dataclasses

import pytest

from parallelrun.core.errors import SettingsError
from parallelrun.core.setting_rules import StackLimits, parse_size
from parallelrun.core.settings import (
    DEFAULT_BYTES_PER_BATCH,
    DEFAULT_FILES_PER_BATCH,
    RunSettings,
    check_for_files,
    parse_assignments,
    resolve,
)

ALL_SETTINGS = {f.name for f in dataclasses.fields(RunSettings)}

# --- defaults -------------------------------------------------------------------------------

DEFAULTS = {
    "mini_batch_size": None,
    "error_threshold": -1,
    "allowed_failed_count": -1,
    "allowed_failed_percent": 100.0,
    "output_action": "append_row",
    "append_row_file_name": "parallel_run_step.txt",
    "run_invocation_timeout": 60,
    "run_max_try": 3,
    "process_count_per_node": None,
    "node_count": 1,
    "logging_level": "INFO",
    "side_inputs": (),
    "arguments": (),
    "partition_keys": (),
    "allow_reuse": True,
    "isolate_failures": True,
    "max_inflight_batches": None,
    "output_path": None,
    "environment_variables": {},
    "input_type": "files",
    "input_format": None,
    "output_format": "txt",
    "append_row_separator": " ",
    "csv_options": {},
    "partition_format": None,
    "model_cache_size": "256MB",
}


def test_defaults_cover_every_setting():
    assert set(DEFAULTS) == ALL_SETTINGS


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_default_value(name):
    assert getattr(RunSettings(), name) == DEFAULTS[name]
    # resolve() with no overrides keeps the defaults too
    assert getattr(resolve({}), name) == DEFAULTS[name]


def test_default_mini_batch_size_is_10_files_or_1mb():
    settings = RunSettings()
    assert DEFAULT_FILES_PER_BATCH == 10 and settings.files_per_batch == 10
    assert DEFAULT_BYTES_PER_BATCH == 1024 * 1024 and settings.bytes_per_batch == 1024 * 1024
    assert settings.concurrency is None


# --- accepted values ------------------------------------------------------------------------

ACCEPTED = [
    ("mini_batch_size", "20", "20"),
    ("mini_batch_size", 20, "20"),
    ("mini_batch_size", "1MB", "1MB"),
    ("mini_batch_size", " 10 mb ", "10MB"),
    ("mini_batch_size", "1024KB", "1024KB"),
    ("mini_batch_size", "1GB", "1GB"),
    ("error_threshold", "5", 5),
    ("error_threshold", -1, -1),
    ("error_threshold", 0, 0),
    ("allowed_failed_count", "2", 2),
    ("allowed_failed_percent", "12.5", 12.5),
    ("allowed_failed_percent", 0, 0.0),
    ("allowed_failed_percent", "100", 100.0),
    ("output_action", "summary_only", "summary_only"),
    ("output_action", "append_row", "append_row"),
    ("append_row_file_name", "predictions.csv", "predictions.csv"),
    ("run_invocation_timeout", "120", 120),
    ("run_invocation_timeout", 1, 1),
    ("run_max_try", "1", 1),
    ("run_max_try", 2, 2),
    ("process_count_per_node", "4", 4),
    ("process_count_per_node", "none", None),
    ("node_count", "2", 2),
    ("logging_level", "debug", "DEBUG"),
    ("logging_level", "WARNING", "WARNING"),
    ("side_inputs", "s3://my-bucket/labels.txt", ("s3://my-bucket/labels.txt",)),
    ("side_inputs", "s3://my-bucket/a,s3://other-bucket/b/c", ("s3://my-bucket/a", "s3://other-bucket/b/c")),
    ("side_inputs", ["s3://my-bucket/a"], ("s3://my-bucket/a",)),
    ("arguments", "--a 1 --b 2", ("--a", "1", "--b", "2")),
    ("arguments", "--name 'two words'", ("--name", "two words")),
    ("arguments", ["--top", 3], ("--top", "3")),
    ("partition_keys", "a,b", ("a", "b")),
    ("partition_keys", " a , b ", ("a", "b")),
    ("partition_keys", ["a", "b"], ("a", "b")),
    ("partition_format", "{store}/{date}/*.png", "{store}/{date}/*.png"),
    ("partition_format", " region={region}/** ", "region={region}/**"),
    ("model_cache_size", "512mb", "512MB"),
    ("model_cache_size", "1048576", "1048576B"),
    ("allow_reuse", "false", False),
    ("allow_reuse", "true", True),
    ("allow_reuse", False, False),
    ("isolate_failures", "no", False),
    ("isolate_failures", "1", True),
    ("max_inflight_batches", "50", 50),
    ("max_inflight_batches", "", None),
    ("output_path", "s3://out-bucket/results/", "s3://out-bucket/results/"),
    ("output_path", "none", None),
    ("environment_variables", '{"MODE": "fast", "N": 3}', {"MODE": "fast", "N": "3"}),
    ("environment_variables", {"_X1": "y"}, {"_X1": "y"}),
    ("input_type", "tabular", "tabular"),
    ("output_format", "csv", "csv"),
    ("csv_options", '{"delimiter": ";", "encoding": "latin-1"}', {"delimiter": ";", "encoding": "latin-1"}),
    ("append_row_separator", ",", ","),
    ("append_row_separator", "\\t", "\t"),
    ("input_format", "parquet", "parquet"),
    ("input_format", "none", None),
]


def test_accepted_values_cover_every_setting():
    assert {name for name, _, _ in ACCEPTED} == ALL_SETTINGS
    # and each has at least one non-default accepted value
    for name in ALL_SETTINGS:
        assert any(n == name and expected != DEFAULTS[name] for n, _, expected in ACCEPTED), name


@pytest.mark.parametrize(("name", "value", "expected"), ACCEPTED)
def test_accepted_value(name, value, expected):
    settings = resolve({name: value})
    assert getattr(settings, name) == expected
    # other settings untouched
    for other in ALL_SETTINGS - {name}:
        assert getattr(settings, other) == DEFAULTS[other]


def test_overrides_apply_on_top_of_base():
    base = resolve({"mini_batch_size": "5", "logging_level": "error"})
    settings = resolve({"run_max_try": "2"}, base=base)
    assert (settings.mini_batch_size, settings.logging_level, settings.run_max_try) == ("5", "ERROR", 2)
    assert base.run_max_try == 3  # the base is not changed


def test_mini_batch_size_counts_and_sizes():
    assert resolve({"mini_batch_size": "20"}).files_per_batch == 20
    assert resolve({"mini_batch_size": "10MB"}).bytes_per_batch == 10 * 1024**2


# --- refused values -------------------------------------------------------------------------

REFUSED = [
    ("mini_batch_size", 0, "a file count such as 10"),
    ("mini_batch_size", "0", "a file count such as 10"),
    ("mini_batch_size", "-1", "a file count such as 10"),
    ("mini_batch_size", "abc", "1024KB, 10MB or 1GB"),
    ("mini_batch_size", "1TB", "1024KB, 10MB or 1GB"),
    ("mini_batch_size", "1.5MB", "1024KB, 10MB or 1GB"),
    ("mini_batch_size", True, "a file count such as 10"),
    ("error_threshold", -2, "an integer >= -1"),
    ("error_threshold", "x", "an integer >= -1"),
    ("error_threshold", True, "an integer >= -1"),
    ("allowed_failed_count", -5, "an integer >= -1"),
    ("allowed_failed_percent", 101, "a number from 0 to 100"),
    ("allowed_failed_percent", -1, "a number from 0 to 100"),
    ("allowed_failed_percent", "nan", "a number from 0 to 100"),
    ("allowed_failed_percent", "lots", "a number from 0 to 100"),
    ("allowed_failed_percent", True, "a number from 0 to 100"),
    ("output_action", "bogus", "one of append_row, summary_only"),
    ("output_action", "APPEND_ROW", "one of append_row, summary_only"),
    ("append_row_file_name", "", "a file name without '/'"),
    ("append_row_file_name", "a/b", "a file name without '/'"),
    ("append_row_file_name", "a\\b", "a file name without '/'"),
    ("append_row_file_name", ".hidden", "does not start with '.'"),
    ("append_row_file_name", "x" * 256, "a file name without '/'"),
    ("run_invocation_timeout", 0, "whole seconds from 1 to"),
    ("run_invocation_timeout", "soon", "whole seconds from 1 to"),
    ("run_max_try", 0, "an integer from 1 to 3"),
    ("run_max_try", "4", "an integer from 1 to 3 (the stack's MaxReceiveCount)"),
    ("process_count_per_node", 0, "an integer from 1 to 100, or none"),
    ("process_count_per_node", "101", "an integer from 1 to 100, or none"),
    ("node_count", 0, "an integer from 1 to 100"),
    ("logging_level", "verbose", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("side_inputs", "not-a-uri", "s3://bucket/key URIs"),
    ("side_inputs", "s3://my-bucket/a,,s3://my-bucket/b", "s3://bucket/key URIs"),
    ("side_inputs", "https://example.com/a", "s3://bucket/key URIs"),
    ("arguments", "--name 'unclosed", "command-line words"),
    ("arguments", {"a": 1}, "command-line words"),
    ("partition_keys", "a,,b", "comma-separated list of column names"),
    ("partition_format", "*/*.png", "naming each field once"),
    ("partition_format", "{a}/{a}/*.png", "naming each field once"),
    ("partition_format", "{a}/{b/*.png", "naming each field once"),
    ("model_cache_size", "lots", "a size such as 512MB"),
    ("allow_reuse", "maybe", "true or false"),
    ("isolate_failures", "2", "true or false"),
    ("max_inflight_batches", 0, "an integer from 1 to 10000"),
    ("max_inflight_batches", "10001", "an integer from 1 to 10000"),
    ("output_path", "http://x", "an s3://bucket/prefix URI"),
    ("output_path", "s3://", "an s3://bucket/prefix URI"),
    ("environment_variables", "{bad json", "a JSON object of names to values"),
    ("environment_variables", {"1BAD": "x"}, "a JSON object of names to values"),
    ("environment_variables", '["A"]', "a JSON object of names to values"),
    ("environment_variables", {"A-B": "x"}, "a JSON object of names to values"),
    ("input_type", "table", "one of files, tabular"),
    ("output_format", "xlsx", "one of txt, csv"),
    ("csv_options", '{"delimiter": ";;"}', "a JSON object of delimiter"),
    ("csv_options", '{"encoding": "utf-16"}', "keeps newlines as bytes"),
    ("csv_options", '{"sep": ","}', "a JSON object of delimiter"),
    ("append_row_separator", "ab", "one character other than a newline"),
    ("append_row_separator", "\n", "one character other than a newline"),
    ("input_format", "xlsx", "one of csv, jsonl, parquet"),
]


def test_refused_values_cover_every_setting():
    assert {name for name, _, _ in REFUSED} == ALL_SETTINGS


def _assert_message(error: SettingsError, name: str, value, allowed_fragment: str) -> None:
    message = str(error)
    assert error.setting == name
    assert error.value == value
    assert name in message
    assert repr(value) in message
    assert allowed_fragment in message


@pytest.mark.parametrize(("name", "value", "allowed"), REFUSED)
def test_refused_value(name, value, allowed):
    with pytest.raises(SettingsError) as caught:
        resolve({name: value})
    _assert_message(caught.value, name, value, allowed)


def test_unknown_setting_is_refused_and_known_ones_listed():
    with pytest.raises(SettingsError) as caught:
        resolve({"mini_batch": "10"})
    _assert_message(caught.value, "mini_batch", "10", "known settings are")
    for name in ALL_SETTINGS:
        assert name in str(caught.value)


def test_run_invocation_timeout_limited_by_worker_timeout():
    limits = StackLimits(worker_timeout=300, worker_batch_size=2)
    assert limits.max_run_invocation_timeout == (300 - 30) // 2 == 135
    assert resolve({"run_invocation_timeout": "135"}, limits=limits).run_invocation_timeout == 135
    with pytest.raises(SettingsError) as caught:
        resolve({"run_invocation_timeout": 136}, limits=limits)
    _assert_message(caught.value, "run_invocation_timeout", 136, "whole seconds from 1 to 135")
    message = str(caught.value)
    assert "worker's timeout of 300 s" in message
    assert "WorkerTimeout" in message


def test_default_run_invocation_timeout_rechecked_against_a_small_stack():
    # The default of 60 s cannot run on a stack whose worker times out after 60 s.
    limits = StackLimits(worker_timeout=60)
    with pytest.raises(SettingsError) as caught:
        resolve({}, limits=limits)
    _assert_message(caught.value, "run_invocation_timeout", 60, "whole seconds from 1 to 30")


def test_run_max_try_limited_by_max_receive_count():
    limits = StackLimits(max_receive_count=3)
    assert resolve({"run_max_try": "3"}, limits=limits).run_max_try == 3
    with pytest.raises(SettingsError) as caught:
        resolve({"run_max_try": 4}, limits=limits)
    _assert_message(caught.value, "run_max_try", 4, "an integer from 1 to 3 (the stack's MaxReceiveCount)")
    # a stack with more receives allows more tries
    assert resolve({"run_max_try": 5}, limits=StackLimits(max_receive_count=5)).run_max_try == 5


def test_stored_base_rechecked_against_stack_limits():
    base = resolve({"run_max_try": 5}, limits=StackLimits(max_receive_count=5))
    with pytest.raises(SettingsError) as caught:
        resolve({}, base=base, limits=StackLimits(max_receive_count=3))
    _assert_message(caught.value, "run_max_try", 5, "an integer from 1 to 3")


def test_process_count_times_node_count_limited_by_worker_concurrency():
    limits = StackLimits(worker_max_concurrency=10)
    ok = resolve({"process_count_per_node": "5", "node_count": "2"}, limits=limits)
    assert ok.concurrency == 10
    with pytest.raises(SettingsError) as caught:
        resolve({"process_count_per_node": "4", "node_count": "3"}, limits=limits)
    _assert_message(caught.value, "process_count_per_node", 4, "process_count_per_node x node_count at most 10")
    assert "now 12" in str(caught.value)
    # checked across settings: node_count alone pushing a base over the limit is refused too
    with pytest.raises(SettingsError, match="at most 10"):
        resolve({"node_count": 3}, base=resolve({"process_count_per_node": 4}, limits=limits), limits=limits)


# --- helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1024, 1024),
        ("1024", 1024),
        ("1024KB", 1024 * 1024),
        ("10MB", 10 * 1024**2),
        ("10mb", 10 * 1024**2),
        ("1GB", 1024**3),
        ("7B", 7),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "1TB", "-1", "1.5MB", "ten"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_parse_assignments():
    assert parse_assignments(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    assert parse_assignments([" c =", "d= 2"]) == {"c": "", "d": " 2"}
    assert parse_assignments([]) == {}


@pytest.mark.parametrize("pair", ["mini_batch_size", "=5"])
def test_parse_assignments_refuses_pair_without_key_or_equals(pair):
    with pytest.raises(SettingsError) as caught:
        parse_assignments(["a=1", pair])
    assert repr(pair) in str(caught.value)
    assert "key=value" in str(caught.value)


def test_json_round_trip():
    settings = resolve(
        {
            "mini_batch_size": "1MB",
            "error_threshold": 4,
            "allowed_failed_percent": "12.5",
            "output_action": "summary_only",
            "append_row_file_name": "out.txt",
            "run_invocation_timeout": 90,
            "run_max_try": 2,
            "process_count_per_node": 3,
            "node_count": 2,
            "logging_level": "debug",
            "side_inputs": "s3://my-bucket/a,s3://my-bucket/b",
            "arguments": "--a 1 --b 2",
            "partition_keys": "a,b",
            "allow_reuse": "false",
            "isolate_failures": "false",
            "max_inflight_batches": 7,
            "output_path": "s3://out-bucket/x/",
            "environment_variables": '{"MODE": "fast"}',
        }
    )
    text = settings.to_json()
    back = RunSettings.from_json(text)
    assert back == settings
    assert isinstance(back.side_inputs, tuple) and isinstance(back.arguments, tuple)
    assert isinstance(back.partition_keys, tuple)
    assert back.to_json() == text
    assert RunSettings.from_json(RunSettings().to_json()) == RunSettings()


def test_window():
    limits = StackLimits(max_inflight_batches=200)
    assert RunSettings().window(limits) == 200  # the stack's default
    assert RunSettings(max_inflight_batches=50).window(limits) == 50
    assert RunSettings(process_count_per_node=4).window(limits) == 4  # capped by concurrency
    assert RunSettings(process_count_per_node=4, node_count=3).window(limits) == 12
    assert RunSettings(process_count_per_node=4, node_count=3, max_inflight_batches=5).window(limits) == 5
    assert RunSettings(process_count_per_node=300).window(limits) == 200


def test_stack_limits_from_env():
    env = {
        "PARALLELRUN_WORKER_TIMEOUT": "300",
        "PARALLELRUN_WORKER_BATCH_SIZE": "2",
        "PARALLELRUN_MAX_RECEIVE_COUNT": "5",
        "PARALLELRUN_MAX_INFLIGHT_BATCHES": "40",
        "PARALLELRUN_WORKER_MAX_CONCURRENCY": "8",
        "PARALLELRUN_PLANNER_INPUTS_PER_INVOCATION": "3",
        "UNRELATED": "1",
    }
    limits = StackLimits.from_env(env)
    assert limits == StackLimits(
        worker_timeout=300, worker_batch_size=2, max_receive_count=5, max_inflight_batches=40, worker_max_concurrency=8,
        planner_inputs_per_invocation=3,
    )
    assert limits.max_run_invocation_timeout == 135
    # unset or empty variables keep the defaults
    assert StackLimits.from_env({"PARALLELRUN_WORKER_TIMEOUT": ""}) == StackLimits()
    assert StackLimits.from_env({"PARALLELRUN_MAX_RECEIVE_COUNT": "4"}) == StackLimits(max_receive_count=4)


def test_stack_limits_from_process_env(monkeypatch):
    for var in (
        "PARALLELRUN_WORKER_TIMEOUT",
        "PARALLELRUN_WORKER_BATCH_SIZE",
        "PARALLELRUN_MAX_RECEIVE_COUNT",
        "PARALLELRUN_MAX_INFLIGHT_BATCHES",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PARALLELRUN_WORKER_MAX_CONCURRENCY", "7")
    assert StackLimits.from_env() == StackLimits(worker_max_concurrency=7)


def test_check_for_files():
    check_for_files(RunSettings())
    check_for_files(resolve({"mini_batch_size": "20"}))
    settings = resolve({"mini_batch_size": "1MB"})
    with pytest.raises(SettingsError) as caught:
        check_for_files(settings)
    _assert_message(caught.value, "mini_batch_size", "1MB", "a file count such as 10 for file inputs")


# --- upper bounds and what a drop folder may set (issue 10) ------------------------------------

BOUNDS = [  # (overrides at the bound, accepted; the same one past it, refused; the refused value; the limit said)
    ({"mini_batch_size": 200}, {"mini_batch_size": 201}, "201", "at most 200 files per mini-batch"),
    ({"input_type": "tabular", "mini_batch_size": "1GB"}, {"input_type": "tabular", "mini_batch_size": "1025MB"},
     "1025MB", "at most 1GB (1073741824 bytes) per tabular mini-batch"),
    ({"arguments": ["x"] * 100}, {"arguments": ["x"] * 101}, ["x"] * 101, "at most 100 command-line words"),
    ({"arguments": ["x" * 1024]}, {"arguments": ["x" * 1025]}, ["x" * 1025], "of at most 1024 characters each"),
    ({"side_inputs": [f"s3://my-bucket/{i}" for i in range(20)]},
     {"side_inputs": [f"s3://my-bucket/{i}" for i in range(21)]}, [f"s3://my-bucket/{i}" for i in range(21)],
     "a comma-separated list of at most 20 s3://bucket/key URIs"),
    ({"partition_keys": [f"k{i}" for i in range(10)]}, {"partition_keys": [f"k{i}" for i in range(11)]},
     [f"k{i}" for i in range(11)], "at most 10 names of at most 128 characters"),
    ({"partition_keys": "k" * 128}, {"partition_keys": "k" * 129}, "k" * 129, "at most 10 names of at most 128"),
    ({"partition_format": "{a}/" + "x" * 1020}, {"partition_format": "{a}/" + "x" * 1021}, "{a}/" + "x" * 1021,
     "of at most 1024 characters"),
    ({"environment_variables": {f"V{i}": "x" for i in range(50)}},
     {"environment_variables": {f"V{i}": "x" for i in range(51)}}, {f"V{i}": "x" for i in range(51)},
     "at most 50 names of at most 128 characters, values of at most 1024"),
    ({"environment_variables": {"V": "x" * 1024}}, {"environment_variables": {"V": "x" * 1025}}, {"V": "x" * 1025},
     "values of at most 1024"),
    ({"environment_variables": {"V" * 128: "x"}}, {"environment_variables": {"V" * 129: "x"}}, {"V" * 129: "x"},
     "at most 50 names of at most 128 characters"),
    ({"model_cache_size": "10240MB"}, {"model_cache_size": "10241MB"}, "10241MB", "at most 10240MB"),
    ({"error_threshold": 2**53 - 1}, {"error_threshold": 2**53}, 2**53, f"at most {2**53 - 1}"),
    ({"allowed_failed_count": 2**53 - 1}, {"allowed_failed_count": 2**53}, 2**53, f"at most {2**53 - 1}"),
    ({"max_inflight_batches": 10000}, {"max_inflight_batches": 10001}, 10001, "an integer from 1 to 10000"),
    ({"output_path": "s3://out-bucket/" + "k" * 512}, {"output_path": "s3://out-bucket/" + "k" * 513},
     "s3://out-bucket/" + "k" * 513, "whose key part has at most 512 bytes"),
    ({"output_path": "s3://out-bucket/" + "é" * 256}, {"output_path": "s3://out-bucket/" + "é" * 256 + "k"},
     "s3://out-bucket/" + "é" * 256 + "k", "at most 512 bytes"),
]


def _bounded(overrides: dict) -> str:
    return next(name for name in overrides if name != "input_type")


@pytest.mark.parametrize(("ok", "over", "value", "limit"), BOUNDS,
                         ids=[f"{_bounded(over)}-{i}" for i, (_, over, _, _) in enumerate(BOUNDS)])
def test_every_size_and_count_has_an_upper_bound_named_when_refused(ok, over, value, limit):
    resolve(ok)
    with pytest.raises(SettingsError) as caught:
        resolve(over)
    _assert_message(caught.value, _bounded(over), value, limit)


def test_a_tabular_mini_batch_of_bytes_is_not_bounded_as_a_file_count():
    assert resolve({"input_type": "tabular", "mini_batch_size": "500"}).bytes_per_batch == 500


@pytest.mark.parametrize("name", ["AZUREML_MODEL_DIR", "PARALLELRUN_FAULTS", "PARALLELRUN_CACHE", "AWS_ACCESS_KEY_ID",
                                  "AWS_ENDPOINT_URL", "PYTHONPATH", "PYTHONSTARTUP", "LD_PRELOAD", "LD_LIBRARY_PATH",
                                  "PATH", "HOME", "https_proxy", "REQUESTS_CA_BUNDLE", "LAMBDA_TASK_ROOT", "_HANDLER"])
def test_no_source_may_set_a_variable_of_the_runtime(name):
    variables = {"MODE": "fast", name: "/tmp/planted"}
    with pytest.raises(SettingsError) as caught:
        resolve({"environment_variables": variables})
    assert caught.value.setting == "environment_variables" and caught.value.value == variables
    assert f"{name} is parallelrun's, the AWS SDK's, Lambda's or the interpreter's own" in str(caught.value)


def test_the_collated_file_may_not_be_a_marker():
    with pytest.raises(SettingsError, match="other than _READY"):
        resolve({"append_row_file_name": "_READY"})


def test_a_drop_folder_may_set_run_settings_but_not_what_the_script_sees():
    from parallelrun.core.settings import DROP_FOLDER_SETTINGS, check_drop_overrides

    # A new setting is refused to markers until it is added to the allow-list on purpose.
    assert ALL_SETTINGS - DROP_FOLDER_SETTINGS == {"environment_variables", "side_inputs", "arguments"}
    assert DROP_FOLDER_SETTINGS <= ALL_SETTINGS
    check_drop_overrides({name: "anything" for name in DROP_FOLDER_SETTINGS} | {"not_a_setting": 1})
    for name in ALL_SETTINGS - DROP_FOLDER_SETTINGS:
        with pytest.raises(SettingsError) as caught:
            check_drop_overrides({"mini_batch_size": 2, name: "x"})
        _assert_message(caught.value, name, "x", "cannot be set from a drop folder's _READY marker")
