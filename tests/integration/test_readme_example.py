# The README's example test (README.md, "Your own tests in pytest"), verbatim.
def test_thp_always_maps_anonymous_memory_with_blocks(kvm_lab):
    result = kvm_lab.run({
        "name": "anon-64m-thp-always",
        "l1": {"thp": "always"},
        "memslots": [{"ipa": "1G", "size": "64M", "backing": "anonymous"}],
        "guest": {"access": "write"},
    })
    assert result.regions.blocks == 32, result
    assert kvm_lab.run("anon-thp-never").regions.pages == 16
