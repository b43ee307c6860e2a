"""kvmlab images build, key, list, clean: the image cache."""

from __future__ import annotations

import json
from typing import Any

import click

from lab.builder import keep
from lab.builder.build import Builder
from lab.builder.store import Store, tree_size
from lab.cli.base import kernel_options, lab_config, main
from lab.config import load_config
from lab.core.errors import UserError
from lab.core.progress import Progress
from lab.machine.lab import Lab, list_labs


@main.group()
def images() -> None:
    """Build, list and remove the cached L1 images."""


@images.command("build")
@click.option("--config", "-c", type=click.Path(dir_okay=False))
@click.option("--kernel", "-k", "kernels", multiple=True, metavar="KERNEL",
              help="A kernel to build or fetch (repeatable; as for `up --kernel`); default: the config's.")
@click.option("--no-l2-kernel", is_flag=True,
              help="Not the L2 Linux guests' kernel (built from source once: minutes the first time).")
@click.pass_obj
def images_build(progress: Progress, config, kernels, no_l2_kernel) -> None:
    """Build (or find cached) the kernel and userspace images, and the L2 Linux guests'
    kernel the thp suite's l2-linux-thp boots."""
    builder = Builder(progress=progress)
    cfg = lab_config(config)
    built: list[Any] = [builder.rootfs(cfg), builder.tools()]
    for suite in kernels or [cfg.kernel]:
        built.append(builder.kernel(lab_config(config, kernel=suite)))
    l2 = None if no_l2_kernel else builder.l2_kernel(cfg.mirror, cfg.updates)
    for item in built:
        manifest = item.manifest
        where = getattr(item, "image", None) or getattr(item, "root", None) or getattr(item, "path", "")
        click.echo(f"{manifest.get('kind', 'kernel')}: {manifest.get('release') or manifest.get('suite') or 'l1'} "
                   f"{manifest.get('key', '')[:16]}  {where}")
    if l2 is not None:
        click.echo(f"l2kernel: {l2}")


@images.command("key")
@click.option("--config", "-c", type=click.Path(dir_okay=False))
@kernel_options
def images_key(config, kernel, modules) -> None:
    """Print the cache key of the images a config needs (for CI caches; builds nothing)."""
    click.echo(Builder().cache_key(lab_config(config, kernel=kernel, modules=modules)))


@images.command("list")
@click.option("--json", "as_json", is_flag=True)
def images_list(as_json) -> None:
    """List cached images: what each holds, and whether this kvmlab still uses it."""
    store = Store()
    entries = store.entries()
    if as_json:
        click.echo(json.dumps([e.manifest for e in entries], indent=2))
        return
    if not entries:
        click.echo(f"No images in {store.images}; `kvmlab images build` or `kvmlab up` builds them.")
        return
    from rich.console import Console
    from rich.table import Table

    current = keep.current_keys(Builder(), load_config())
    table = Table("kind", "suite", "contents", "key", "size", "built", "state", title=str(store.images))
    for entry in entries:
        m = entry.manifest
        contents = {"kernel": lambda: f"{m['release']}, {len(m['modules'])} modules",
                    "rootfs": lambda: f"{len(m['packages'])} packages",
                    "source": lambda: f"{m['package']} {m['version']}",
                    "l2kernel": lambda: f"L2 Linux {m.get('release', '')}",
                    "selftests": lambda: f"{len(m.get('tests', []))} KVM selftests",
                    }.get(m["kind"], lambda: "L1 tools, " + ", ".join(m.get("params_offset", {})))()
        suite = m.get("suite") or (m.get("label", "-") if m["kind"] in ("l2kernel", "selftests") else "-")
        size = f"{tree_size(entry.path) / 2**20:.0f} MiB"
        table.add_row(m["kind"], suite, contents, m["key"][:12], size,
                      m["built_at"][:16].replace("T", " "), "current" if m["key"] in current else "stale")
    Console(width=max(100, Console().width)).print(table)
    if any(e.manifest["key"] not in current for e in entries):
        click.echo("`kvmlab images clean --stale` removes the stale ones.")


@images.command("clean")
@click.option("--stale", is_flag=True,
              help="Only what this kvmlab would no longer build (older code, recipe or config).")
@click.option("--snapshots", "only_snapshots", is_flag=True, help="Only the saved L1 snapshots (kvmlab up --snapshot).")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="The config whose images --stale keeps.")
def images_clean(stale, only_snapshots, config) -> None:
    """Remove cached images and L1 snapshots (rebuilt on the next `up`)."""
    from lab.machine import snapshot

    running = [n for n in list_labs() if Lab(n).running()]
    if running:
        raise UserError(f"labs are running on these images ({', '.join(running)}); `kvmlab down --all` first")
    if only_snapshots:
        freed = snapshot.clean(None)
        click.echo(f"Removed the L1 snapshots ({freed / 2**20:.0f} MiB).")
        return
    kept = keep.current_keys(Builder(), lab_config(config)) if stale else None
    freed = Store().clean(kept)
    # A snapshot is only good with the images it was taken on.
    left = {str(e.manifest.get("key")) for e in Store().entries()} if stale else None
    freed += snapshot.clean(left)
    click.echo(f"Removed {'stale' if stale else 'all'} cached images and snapshots ({freed / 2**20:.0f} MiB).")

