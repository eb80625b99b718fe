"""Run many gcloud command lines through one gcloud process: gcloud's own entry point (gcloud_main.CreateCLI, the
CLI object `gcloud` itself builds and executes), so its argument parser sees each line exactly as the binary would,
without a second of start-up per line. Run with gcloud's own Python; reads a JSON list of argv lists on stdin,
prints one JSON list of exit codes (argparse errors are 2; a command that parsed and then found no account is 1) and
writes SEPARATOR before each command's messages on stderr. The modules are loaded once; the CLI object is built
anew for each line."""

from __future__ import annotations

import json
import os
import sys

SEPARATOR = "@@llm-wizard-gcloud-parse@@"


def main() -> None:
    root = os.environ["GCLOUD_SDK_ROOT"]
    sys.path[:0] = [os.path.join(root, "lib"), os.path.join(root, "lib", "third_party")]
    from googlecloudsdk import gcloud_main

    codes = []
    for argv in json.load(sys.stdin):
        cli = gcloud_main.CreateCLI([])  # afresh: a parser run twice in one CLI keeps state (--metadata "given twice")
        sys.stderr.write(f"\n{SEPARATOR}\n")
        sys.stderr.flush()
        try:
            cli.Execute(argv[1:])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # noqa: BLE001 - what gcloud raised instead of exiting: reported, not fatal
            sys.stderr.write(f"{type(e).__name__}: {e}\n")
            code = 1
        sys.stderr.flush()
        codes.append(code)
    print(json.dumps(codes))


if __name__ == "__main__":
    main()
