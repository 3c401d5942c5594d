"""The `fa4doctor` command line. Each command lives in its own module and loads only when run,
so `fa4doctor check` never pays for what `fa4doctor serve` imports.

Exit codes follow promtool: 0 healthy, 1 the tool itself failed, 2 usage error, 3 the check ran
and found problems.
"""

from __future__ import annotations

import importlib

import click

from fa4doctor import __version__

# command name -> ("module:attribute" of a click.Command, one-line help shown without importing it)
COMMANDS = {
    "check": ("fa4doctor.cli.check:check", "Probe this node: packages, imports, GPUs, eligibility."),
    "explain": ("fa4doctor.cli.explain:explain", "Which backend runs one attention call, and why."),
    "smoke": ("fa4doctor.cli.smoke:smoke", "Prove each backend on this node against float64."),
    "bench": ("fa4doctor.cli.bench:bench", "Time each backend and SDPA kernel here; record the speed ledger."),
    "serve": ("fa4doctor.cli.serve:serve", "Run the node daemon that Prometheus scrapes."),
    "native": ("fa4doctor.cli.native:native", "Build or inspect the compiled hit path of attention()."),
    "cluster": ("fa4doctor.cli.cluster:cluster", "One verdict for a whole job: run on every rank under torchrun."),
    "report": ("fa4doctor.cli.report:report", "Write one HTML page of this node's correctness and speed matrices."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fa4doctor")
def cli() -> None:
    """Does FlashAttention-4 really work on this GPU node, correctly and fast?

    Exit status: 0 healthy, 1 fa4doctor failed, 2 usage error, 3 problems found.
    """


def main() -> None:
    cli(prog_name="fa4doctor")
