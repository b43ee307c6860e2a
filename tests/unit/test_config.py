"""Config loading and validation: every bad value is one line naming file, key and value."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from lab.cli import main
from lab.config import DEFAULT_CONFIG, load_config
from lab.core.errors import ConfigError
from lab.core.validate import size_mib as parse_size_mib


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    return path


def test_default_config_loads_with_documented_defaults():
    config = load_config()
    assert (config.name, config.kernel, config.cpus, config.memory_mib, config.thp) == \
        ("default", "trixie", 2, 2048, "always")
    assert config.qemu_cpu == "max,pauth-impdef=on"
    assert config.sources == [str(DEFAULT_CONFIG)]


def test_user_file_overrides_default_and_cli_overrides_file(tmp_path):
    path = write(tmp_path, "lab:\n  cpus: 4\n  memory: 1536M\n  thp: never\n")
    config = load_config(path, {"lab.cpus": 1, "lab.thp": None})
    assert config.cpus == 1  # CLI wins
    assert config.memory_mib == 1536  # file wins over default
    assert config.thp == "never"  # None means "option not given"


@pytest.mark.parametrize("text, expected", [
    ("lab:\n  cpus: two\n", "lab.yaml: lab.cpus: expected an integer from 1 to 16, got 'two'"),
    ("lab:\n  cpus: true\n", "lab.cpus: expected an integer from 1 to 16, got True"),
    ("lab:\n  cpus: 0\n", "lab.cpus: expected an integer from 1 to 16, got 0"),
    ("lab:\n  cpuz: 2\n", "lab.cpuz: unknown key; known keys in lab: name, kernel, modules, cpus"),
    ("labs:\n  cpus: 2\n", "labs: unknown section; known sections: lab, qemu, images"),
    ("lab: 3\n", "lab: expected a mapping of keys, got 3"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("lab:\n  memory: -1G\n", "lab.memory: expected a size such as 2G"),
    ("lab:\n  memory: 100M\n", "lab.memory: expected a size from 256M to this machine's"),
    ("lab:\n  memory: 10T\n", "lab.memory: expected a size from 256M"),
    ("lab:\n  thp: sometimes\n", "lab.thp: expected one of always, madvise, never, got 'sometimes'"),
    ("qemu:\n  tcg_threads: many\n", "qemu.tcg_threads: expected one of multi, single, got 'many'"),
    ("lab:\n  name: 'My Lab'\n", "lab.name: expected a name of lowercase letters"),
    ("lab:\n  kernel: ./nope/Image\n", "lab.kernel: "),
    ("qemu:\n  extra_args: -s\n", "qemu.extra_args: expected a list of strings, got '-s'"),
    ("qemu:\n  cpu: 'max; rm -rf'\n", "qemu.cpu: expected a -cpu value"),
    ("images:\n  userspace_suite: jessie\n", "images.userspace_suite: expected one of bullseye"),
    ("images:\n  updates: yes please\n", "images.updates: expected true or false"),
    ("lab:\n  cpus: [\n", "malformed YAML at line 3, column 1"),
    ("lab:\n  gdb: 70000\n", "lab.gdb: expected an integer from 0 to 65535, got 70000"),
    ("lab:\n  device_memory: 48M\n", "lab.device_memory: expected 0, or a power of two from 2M to 1G"),
    ("lab:\n  device_memory: 2G\n", "lab.device_memory: expected 0, or a power of two from 2M to 1G"),
    # A listener in extra_args must bind loopback: kvmlab listens nowhere unless asked.
    ("qemu:\n  extra_args: ['-s']\n", "qemu.extra_args: -s: gdb on port 1234 of every interface; use lab.gdb"),
    ("qemu:\n  extra_args: ['-gdb', 'tcp::1234']\n", "'tcp::1234' would listen on every interface; bind 127.0.0.1"),
    ("qemu:\n  extra_args: ['-gdb', 'tcp:0.0.0.0:1234']\n", "'tcp:0.0.0.0:1234' would listen on 0.0.0.0"),
    ("qemu:\n  extra_args: ['-vnc', ':0']\n", "':0' would listen on every interface"),
    ("qemu:\n  extra_args: ['-chardev', 'socket,id=x,host=0.0.0.0,port=4444,server=on']\n", "would listen on 0.0.0.0"),
    ("qemu:\n  extra_args: ['-monitor', 'telnet::4444,server,nowait']\n", "would listen on every interface"),
])
def test_bad_values_are_rejected_naming_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert expected in info.value.message
    assert str(tmp_path / "lab.yaml") in info.value.message
    assert "\n" not in info.value.message


def test_kernel_path_in_a_config_is_relative_to_that_file(tmp_path):
    image = tmp_path / "Image"
    image.write_bytes(b"\0" * 0x38 + b"ARM\x64" + b"\0" * 4)
    config = load_config(write(tmp_path, "lab:\n  kernel: Image\n"))
    assert config.kernel == str(image)
    assert not config.kernel_is_suite


def test_kernel_that_is_not_an_arm64_image_is_rejected(tmp_path):
    gz = tmp_path / "vmlinuz"
    gz.write_bytes(b"\x1f\x8b" + b"\0" * 100)
    with pytest.raises(ConfigError, match="gzip-compressed"):
        load_config(None, {"lab.kernel": str(gz)})


@pytest.mark.parametrize("value, mib", [(2048, 2048), ("2G", 2048), ("2GiB", 2048), ("1536M", 1536),
                                        ("1536 MB", 1536), ("524288K", 512)])
def test_sizes(value, mib):
    assert parse_size_mib(value) == mib


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path):
    path = write(tmp_path, "lab:\n  cpus: lots\n")
    result = CliRunner().invoke(main, ["up", "--config", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [f"kvmlab: error: {path}: lab.cpus: expected an integer from 1 to 16, got 'lots'"]


def test_cli_bad_option_value_names_the_option():
    result = CliRunner().invoke(main, ["up", "--memory", "lots"])
    assert result.exit_code == 2
    assert result.output.strip() == ("kvmlab: error: option --memory: lab.memory: expected a size such as 2G, "
                                     "1536M or 2048 (MiB), got 'lots'")


@pytest.mark.parametrize("args", [["-gdb", "tcp:127.0.0.1:1234"], ["-vnc", "localhost:0"], ["-vnc", "unix:/tmp/v"],
                                  ["-chardev", "socket,id=x,path=/tmp/s,server=on"], ["-monitor", "tcp:[::1]:5555,server"],
                                  ["-d", "guest_errors"]])
def test_loopback_listeners_and_other_arguments_are_accepted(tmp_path, args):
    assert load_config(write(tmp_path, f"qemu:\n  extra_args: {args!r}\n")).qemu_extra_args == args


#: The "billion laughs" shape, three levels deep here (nine deep was 2.8 GB before): were the
#: refusal gone, this would still load quickly and the test fail on the message, not hang.
LAUGHS = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 4))


@pytest.mark.parametrize("where, text", [
    ("config", "images:\n  extra_packages: &l0 [x, x, x, x, x, x, x, x, x]\n" + LAUGHS.replace("\n", "\n  ")),
    ("scenario", "memslots: &l0 [{ipa: 1G, size: 64M}]\n" + LAUGHS),
])
def test_yaml_aliases_are_refused_before_anything_expands(tmp_path, where, text):
    """Aliases nesting aliases: refused at the first alias, with its line, exit 2."""
    from lab.core.errors import UserError
    from lab.scenarios import model

    path = tmp_path / f"{where}.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_config(path) if where == "config" else model.load(path)
    message = info.value.message
    assert message.startswith(f"{path}: line ") and "a YAML alias (*l0); aliases are not accepted" in message
    assert info.value.exit_status == 2 and "\n" not in message


def test_a_star_in_a_value_is_no_alias_and_libyaml_reads_the_files(tmp_path):
    """Only an alias event is refused (a quoted '*' is text); the files go through libyaml
    whenever PyYAML has it, as its wheels do (the suites parsed 6 x faster)."""
    import yaml

    from lab.core import validate

    path = tmp_path / "s.yaml"
    path.write_text('description: "*not an alias* and 2 * 3"\nmemslots: []\n')
    assert validate.read_yaml(path, "missing") == {"description": "*not an alias* and 2 * 3", "memslots": []}
    assert validate._LOADER is (yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)


def test_a_file_too_large_to_be_a_config_is_not_parsed(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("lab: {}\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match=r"big.yaml: larger than 1 MiB, not a kvmlab file"):
        load_config(path)


def test_a_symlink_loop_as_kernel_is_one_line_exit_2(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    result = CliRunner().invoke(main, ["up", "--kernel", str(tmp_path / "a")])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith(f"kvmlab: error: option --kernel: lab.kernel: {tmp_path / 'a'}: "
                                                 "cannot follow this path (")


@pytest.mark.parametrize("args", [["kernel", "build", "--src", "{loop}"], ["up", "--config", "{loop}"],
                                  ["test", "--list", "{loop}"], ["report", "{loop}"]])
def test_a_symlink_loop_anywhere_a_path_is_given_is_one_line_exit_2(tmp_path, args):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    result = CliRunner().invoke(main, [a.replace("{loop}", str(tmp_path / "a")) for a in args])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith("kvmlab: error: ") and str(tmp_path / "a") in line, line
