"""Synthesise every environment offline and fail on unsuppressed cdk-nag findings.

Usage: ``python -m surg_deploy.synth --outdir cdk.out [--env prod]`` from ``deploy/aws``.
Writes the CloudFormation templates, cdk-nag's CSV reports and ``nag-findings.json``
(every unsuppressed error and warning, by stack) into the output directory. Exit status 1
when any unsuppressed error remains, so CI and `make test` stop on a new finding.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from surg_deploy.app import build_app


def main(argv: list[str] | None = None) -> int:
    """Synthesise, summarise the nag findings and return the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", default="cdk.out", help="cloud assembly directory")
    parser.add_argument("--env", action="append", help="environment(s); all when omitted")
    args = parser.parse_args(argv)

    assembly = build_app(args.env, outdir=args.outdir).synth()
    findings: dict[str, dict[str, list[str]]] = {}
    for stack in assembly.stacks:
        per_level: dict[str, list[str]] = {"error": [], "warning": []}
        # The per-stack metadata file holds every annotation, cdk-nag's included.
        metadata = json.loads((Path(args.outdir) / f"{stack.stack_name}.metadata.json").read_text())
        for path, entries in metadata.items():
            for entry in entries:
                level = {"aws:cdk:error": "error", "aws:cdk:warning": "warning"}.get(entry["type"])
                if level:
                    per_level[level].append(f"{path} {str(entry['data']).splitlines()[0][:300]}")
        findings[stack.stack_name] = per_level
    summary = Path(args.outdir) / "nag-findings.json"
    summary.write_text(json.dumps(findings, indent=2, sort_keys=True))

    errors = [(s, e) for s, levels in findings.items() for e in levels["error"]]
    warnings = sum(len(levels["warning"]) for levels in findings.values())
    for stack_name, error in errors:
        print(f"UNSUPPRESSED {stack_name} {error}", file=sys.stderr)
    print(
        f"synthesised {len(assembly.stacks)} stacks into {args.outdir}: "
        f"{len(errors)} unsuppressed nag errors, {warnings} warnings"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
