"""The runner the SDK scripts share: each case in order, stopping at the first failure with
its traceback, so tests/it/sdk.rs can show which case failed and why."""

import sys
import traceback


def run(title, cases):
    print(title, flush=True)
    for case in cases:
        print(f"{case.__name__} ...", end=" ", flush=True)
        try:
            case()
        except Exception as error:  # noqa: BLE001 - any failure ends the run with its story
            print("FAILED", flush=True)
            traceback.print_exc()
            print(f"\ncase {case.__name__} failed: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        print("ok", flush=True)
    print(f"all {len(cases)} cases ok", flush=True)
    return 0
