"""The host inventory TOML: defaults, derived libvirt URI, and validation messages."""

from __future__ import annotations

import pytest

from vclvirt.config.inventory import Inventory, load_inventory
from vclvirt.errors import InvalidInput, UnknownHost

MINIMAL = """
[hosts.kvm1]
address = "10.0.0.5"
key_file = "/etc/vclvirt/id_ed25519"
known_hosts = "/etc/vclvirt/known_hosts"
datastore_path = "/var/lib/libvirt/images"
"""


@pytest.fixture
def write(tmp_path):
    """Write TOML text to a file in tmp_path and return its path."""

    def _write(text: str):
        path = tmp_path / "inventory.toml"
        path.write_text(text)
        return path

    return _write


def host_with(write, extra: str):
    """Load MINIMAL plus extra lines for host kvm1 and return that host."""
    return load_inventory(write(MINIMAL + extra)).host("kvm1")


def rejection(write, text: str) -> str:
    """str() of the InvalidInput raised when loading `text`."""
    with pytest.raises(InvalidInput) as caught:
        load_inventory(write(text))
    return str(caught.value)


def test_minimal_host_loads_with_defaults(write):
    """Unset fields take their defaults: port 22, user root, /tmp/vcl, auto type."""
    host = load_inventory(write(MINIMAL)).host("kvm1")
    assert host.name == "kvm1"
    assert host.address == "10.0.0.5"
    assert host.port == 22
    assert host.user == "root"
    assert host.xml_dir == "/tmp/vcl"
    assert host.domain_type == "auto"
    assert host.libvirt_uri is None
    assert host.repository_path is None
    assert host.private_switch is None and host.public_switch is None
    assert host.max_concurrent_loads == 2


def test_vm_path_defaults_to_datastore_path(write):
    """Without vm_path, overlays go to the datastore path."""
    host = load_inventory(write(MINIMAL)).host("kvm1")
    assert host.vm_path == host.vm_dir == "/var/lib/libvirt/images"


def test_explicit_vm_path_is_kept(write):
    """An explicit vm_path is used instead of the datastore."""
    host = host_with(write, 'vm_path = "/srv/vms"\n')
    assert host.vm_path == host.vm_dir == "/srv/vms"
    assert host.datastore_path == "/var/lib/libvirt/images"


def test_paths_are_normalised(write):
    """Redundant slashes and '.' components are removed from host paths."""
    host = host_with(write, 'vm_path = "/srv/./vms//a/"\n')
    assert host.vm_path == "/srv/vms/a"


def test_queue_is_named_after_host(write):
    """Each host's tasks go to queue host.<name>."""
    assert load_inventory(write(MINIMAL)).host("kvm1").queue == "host.kvm1"


def test_derived_libvirt_uri(write):
    """Without libvirt_uri, qemu+libssh with the SSH key and known_hosts is used."""
    host = load_inventory(write(MINIMAL)).host("kvm1")
    assert host.effective_libvirt_uri == (
        "qemu+libssh://root@10.0.0.5:22/system"
        "?keyfile=/etc/vclvirt/id_ed25519&known_hosts=/etc/vclvirt/known_hosts&sshauth=privkey"
    )


def test_derived_libvirt_uri_uses_port_and_user(write):
    """The derived URI carries the configured SSH user and port."""
    host = host_with(write, 'port = 2222\nuser = "vcl"\n')
    assert host.effective_libvirt_uri.startswith("qemu+libssh://vcl@10.0.0.5:2222/system?")


def test_derived_libvirt_uri_escapes_query_characters(write):
    """'&' and '=' in key paths are percent-encoded so they cannot add parameters."""
    host = load_inventory(
        write(MINIMAL.replace("/etc/vclvirt/id_ed25519", "/k/a&sshauth=agent=x"))
    ).host("kvm1")
    uri = host.effective_libvirt_uri
    assert "keyfile=/k/a%26sshauth%3Dagent%3Dx&" in uri
    assert uri.count("sshauth=") == 1


def test_explicit_libvirt_uri_wins(write):
    """A configured libvirt_uri is used as it is."""
    host = host_with(write, 'libvirt_uri = "qemu:///system"\n')
    assert host.effective_libvirt_uri == "qemu:///system"


def test_several_hosts(write):
    """Every [hosts.<name>] table becomes a host of that name."""
    text = MINIMAL + MINIMAL.replace("kvm1", "kvm2").replace("10.0.0.5", "kvm2.example.org")
    inventory = load_inventory(write(text))
    assert sorted(inventory.hosts) == ["kvm1", "kvm2"]
    assert inventory.host("kvm2").address == "kvm2.example.org"


def test_empty_inventory_has_no_hosts(write):
    """A file without hosts loads as an empty inventory."""
    assert load_inventory(write("")).hosts == {}


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('datastore_path = "var/lib/images"', "datastore_path"),
        ('datastore_path = "/var/lib/../../etc"', "datastore_path"),
        ('datastore_path = "/var/lib/my images"', "datastore_path"),
        ('datastore_path = "/var/lib;rm -rf /"', "datastore_path"),
        ('datastore_path = "/var/$(reboot)"', "datastore_path"),
        ('vm_path = ".."', "vm_path"),
        ('vm_path = "/srv/vm*"', "vm_path"),
        ('xml_dir = "/tmp/vcl dir"', "xml_dir"),
        ('repository_path = "/mnt/repo/.."', "repository_path"),
        ("colour = 'red'", "colour"),
        ('domain_type = "xen"', "domain_type"),
        ("port = 0", "port"),
        ("port = 70000", "port"),
        ('port = "ssh"', "port"),
        ('user = "root;id"', "user"),
        ('address = "host;reboot"', "address"),
        ('private_switch = "br0 br1"', "private_switch"),
        ("max_concurrent_loads = 0", "max_concurrent_loads"),
    ],
)
def test_bad_value_names_host_and_field(write, line, field):
    """Each bad value is rejected with the host's name and the field in the message."""
    key = line.split("=")[0].strip()
    base = "\n".join(ln for ln in MINIMAL.splitlines() if not ln.startswith(f"{key} "))
    message = rejection(write, f"{base}\n{line}\n")
    assert "'kvm1'" in message
    assert field in message


def test_missing_required_field_is_named(write):
    """A host without datastore_path is rejected, naming the field."""
    text = "\n".join(ln for ln in MINIMAL.splitlines() if not ln.startswith("datastore_path"))
    message = rejection(write, text)
    assert "'kvm1'" in message and "datastore_path" in message


def test_path_with_trailing_newline_is_rejected(write):
    """A host path ending in a newline is rejected like any other control character."""
    base = "\n".join(ln for ln in MINIMAL.splitlines() if not ln.startswith("datastore_path"))
    message = rejection(write, base + '\ndatastore_path = "/var/lib/images\\n"\n')
    assert "datastore_path" in message


def test_boolean_port_is_rejected(write):
    """`port = true` is not a port number."""
    message = rejection(write, MINIMAL + "port = true\n")
    assert "port" in message


def test_invalid_host_name_is_rejected(write):
    """A host table whose name is not a plain host name is rejected, naming it."""
    message = rejection(write, MINIMAL.replace("[hosts.kvm1]", '[hosts."kvm 1"]'))
    assert "'kvm 1'" in message and "name" in message


def test_unknown_top_level_key_is_rejected(write):
    """Keys other than `hosts` at the top level are rejected."""
    assert "extra" in rejection(write, "extra = 1\n" + MINIMAL)


def test_invalid_toml_is_rejected(write):
    """Text that is not TOML raises InvalidInput, not a parser error."""
    assert "not valid TOML" in rejection(write, "[hosts.kvm1\naddress = ")


@pytest.mark.parametrize("text", ['[hosts]\nkvm1 = "x"\n', "hosts = 3\n"])
def test_host_entry_that_is_not_a_table_is_rejected(write, text):
    """A host (or the hosts key) that is not a table raises InvalidInput."""
    try:
        load_inventory(write(text))
    except InvalidInput:
        return
    except Exception as error:
        pytest.fail(f"{text!r} raised {type(error).__name__}: {error}, not InvalidInput")
    pytest.fail(f"{text!r} was accepted")


def test_missing_file_mentions_vclvirt_inventory(tmp_path):
    """A missing inventory file raises InvalidInput whose text points at VCLVIRT_INVENTORY."""
    with pytest.raises(InvalidInput) as caught:
        load_inventory(tmp_path / "absent.toml")
    assert "absent.toml" in str(caught.value)
    assert "VCLVIRT_INVENTORY" in str(caught.value)


def test_unknown_host_lists_known_hosts(write):
    """Asking for a host that is not there raises UnknownHost naming the known ones."""
    text = MINIMAL + MINIMAL.replace("kvm1", "kvm2")
    with pytest.raises(UnknownHost) as caught:
        load_inventory(write(text)).host("kvm9")
    assert "'kvm9'" in str(caught.value)
    assert "kvm1, kvm2" in str(caught.value)


def test_unknown_host_in_empty_inventory_says_none():
    """An empty inventory reports that no hosts are known."""
    with pytest.raises(UnknownHost, match="known: none"):
        Inventory(hosts={}).host("kvm1")


def test_host_config_is_immutable(write):
    """A loaded host cannot be modified."""
    host = load_inventory(write(MINIMAL)).host("kvm1")
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        host.port = 23  # type: ignore[misc]


@pytest.mark.parametrize(
    ("line", "accepted"),
    [
        ("port = 1", True),
        ("port = 65535", True),
        ("port = 0", False),
        ("port = 65536", False),
        ("max_concurrent_loads = 1", True),
        ("max_concurrent_loads = 64", True),
        ("max_concurrent_loads = 0", False),
        ("max_concurrent_loads = 65", False),
        ("guest_ssh_ports = [1024, 65535]", True),
        ("guest_ssh_ports = [1023, 2000]", False),
        ("guest_ssh_ports = [2000, 65536]", False),
        ("guest_ssh_ports = [3000, 3000]", True),
        ("guest_ssh_ports = [3001, 3000]", False),
        (f'user = "{"u" * 32}"', True),
        (f'user = "{"u" * 33}"', False),
        (f'private_switch = "{"b" * 63}"', True),
        (f'private_switch = "{"b" * 64}"', False),
    ],
)
def test_inventory_limits_at_and_past_their_boundary(write, line, accepted):
    """Each inventory range takes its boundary value and refuses one past it, naming it."""
    field = line.split(" ")[0]
    if accepted:
        assert host_with(write, line + "\n") is not None
    else:
        message = rejection(write, MINIMAL + line + "\n")
        assert "host 'kvm1'" in message
        assert field in message or "guest_ssh_ports" in message


@pytest.mark.parametrize("name", ["h" * 63, "h" * 64])
def test_inventory_host_name_up_to_63_characters(write, name):
    """A host table's name is at most 63 characters (a queue and a directory name)."""
    text = MINIMAL.replace("[hosts.kvm1]", f"[hosts.{name}]")
    if len(name) <= 63:
        assert load_inventory(write(text)).host(name).queue == f"host.{name}"
    else:
        assert f"host '{name}'" in rejection(write, text)


@pytest.mark.parametrize(
    ("computer_id", "port"), [(0, 22000), (999, 22999), (1000, 22000), (1001, 22001)]
)
def test_forwarded_ssh_port_wraps_within_the_range(write, computer_id, port):
    """A guest's forwarded port is low + id modulo the size of [low, high], both ends used."""
    assert host_with(write, "").forwarded_ssh_port(computer_id) == port


@pytest.mark.parametrize(
    ("extra", "through_host"),
    [
        ("", False),
        ('guest_network = "user"\n', True),
        ('guest_network = "user"\nguest_via_host = false\n', False),
        ("guest_via_host = true\n", True),
    ],
)
def test_guests_are_reached_through_the_host_by_default_only_on_user_networking(
    write, extra, through_host
):
    """guest_via_host defaults to true for "user" networking, false for "switches"."""
    assert host_with(write, extra).guests_through_host is through_host


@pytest.mark.parametrize(
    ("extra", "fenced", "uri"),
    [
        ("", True, None),
        ('transport = "local"\n', True, "qemu:///system"),
        ('transport = "local"\nlibvirt_uri = "qemu:///system"\n', True, "qemu:///system"),
        ('transport = "local"\nlibvirt_uri = "test:///default"\n', False, "test:///default"),
        ('libvirt_uri = "qemu:///system"\n', False, "qemu:///system"),
    ],
)
def test_libvirt_goes_through_the_fence_unless_a_uri_is_configured(write, extra, fenced, uri):
    """The derived URI and the local system daemon are fenced; another configured URI is not."""
    host = host_with(write, extra)
    assert host.libvirt_through_fence is fenced
    if uri is not None:
        assert host.effective_libvirt_uri == uri


def test_ssh_transport_needs_key_and_known_hosts(write):
    """An SSH host without known_hosts is refused with the reason."""
    text = MINIMAL.replace('known_hosts = "/etc/vclvirt/known_hosts"\n', "")
    assert "key_file and known_hosts are required with transport ssh" in rejection(write, text)


def test_local_host_needs_no_keys(write):
    """A local host (the worker runs on it) needs neither key_file nor known_hosts."""
    text = '[hosts.kvm1]\ntransport = "local"\ndatastore_path = "/srv/images"\naddress = "h"\n'
    assert load_inventory(write(text)).host("kvm1").vm_dir == "/srv/images"


def test_several_bad_fields_are_all_named_with_dotted_paths(write):
    """Every bad field of a host is named (nested ones with dots), `; ` between them."""
    message = rejection(write, MINIMAL + 'port = 0\nguest_ssh_ports = [1, "x"]\n')
    assert "port: Input should be greater than or equal to 1; " in message
    assert "guest_ssh_ports.1: Input should be a valid integer" in message


def test_unsafe_host_path_message_names_the_value(write):
    """A host path with a shell character is refused, quoting it and the allowed characters."""
    message = rejection(write, MINIMAL + 'xml_dir = "/tmp/a b"\n')
    assert "must be an absolute path of letters, digits and ._+-@/, got '/tmp/a b'" in message


def test_hosts_that_is_not_a_table_is_named(write, tmp_path):
    """`hosts = 3` is refused saying hosts must be a table of [hosts.<name>] tables."""
    path = write("hosts = 3\n")
    with pytest.raises(InvalidInput) as caught:
        load_inventory(path)
    assert caught.value.message == (
        f"inventory {path}: 'hosts' must be a table of [hosts.<name>] tables"
    )
    path = write("[hosts]\nkvm1 = 3\n")
    with pytest.raises(InvalidInput) as caught:
        load_inventory(path)
    assert caught.value.message == f"inventory {path}: hosts.kvm1 must be a table"


def test_missing_inventory_hint_says_how_to_name_one(tmp_path):
    """A missing inventory file hints at VCLVIRT_INVENTORY and --inventory."""
    with pytest.raises(InvalidInput) as caught:
        load_inventory(tmp_path / "nope.toml")
    assert caught.value.hint == "Set VCLVIRT_INVENTORY or pass --inventory"


@pytest.fixture
def fresh(monkeypatch):
    """get_inventory with nothing read yet in this process, and fresh settings."""
    from vclvirt.config import inventory as module
    from vclvirt.config.settings import get_settings

    monkeypatch.setattr(module, "_loaded", {})
    get_settings.cache_clear()
    yield module.get_inventory
    get_settings.cache_clear()


def test_get_inventory_reads_the_named_file_once(fresh, write):
    """The inventory is read once per process: a later change of the file is not seen."""
    path = write(MINIMAL)
    first = fresh(path)
    path.write_text("")
    assert fresh(path) is first
    assert first.host("kvm1").address == "10.0.0.5"


def test_get_inventory_defaults_to_vclvirt_inventory(fresh, write, monkeypatch):
    """Without an argument the inventory is the file VCLVIRT_INVENTORY names."""
    monkeypatch.setenv("VCLVIRT_INVENTORY", str(write(MINIMAL)))
    assert list(fresh().hosts) == ["kvm1"]


def test_get_inventory_without_any_inventory_says_how_to_configure_one(fresh, monkeypatch):
    """No argument and no VCLVIRT_INVENTORY: InvalidInput saying so, with the hint."""
    monkeypatch.delenv("VCLVIRT_INVENTORY", raising=False)
    with pytest.raises(InvalidInput) as caught:
        fresh()
    assert caught.value.message == "no inventory configured"
    assert caught.value.hint == "Set VCLVIRT_INVENTORY or pass --inventory"
