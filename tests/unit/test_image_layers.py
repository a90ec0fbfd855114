"""Which layers a node lacks: chain ids as Docker computes them, the node's listing, the
layers a node must receive."""

from orchestrator.images.layers import (
    chain_ids,
    legacy_layer_chain,
    missing_layers,
    present_chain_ids,
)

# An image's diff ids and the chain ids Docker 20.10 stored them under (its layerdb directory
# names, parent files and diff files, read on the development machine).
DIFF_IDS = [
    "sha256:91985fdc87ab7189c9d971d0ce7c9b1e8d8c0116b0e4fb662d5420bf2746d7c4",
    "sha256:68fac59e0742d2461eeb91a0b992c0ea3a4aa22c7ce70b531429c082b353832f",
    "sha256:beb3f9697cad471a56894a5910c93f1a03907896ff037cbd2d9f3b2023e1ca2c",
]
CHAIN_IDS = [
    "sha256:91985fdc87ab7189c9d971d0ce7c9b1e8d8c0116b0e4fb662d5420bf2746d7c4",
    "sha256:6fe7e971ef8674ff5b006203689dcc82c95a230eca677222e27f773f71b28cea",
    "sha256:c85e5f115e4ef8a29628abbbcc14dfa40cc3eaedf5750a71ed7a0c617dc1a225",
]
A, B, C = DIFF_IDS


def test_chain_ids_are_dockers():
    assert chain_ids(DIFF_IDS) == CHAIN_IDS
    assert chain_ids([]) == []
    # The same layer on another base is another chain: it cannot be reused there.
    assert chain_ids([B, C])[1] != CHAIN_IDS[2]


def test_a_node_lacks_everything_above_its_first_missing_layer():
    assert missing_layers(DIFF_IDS, set()) == DIFF_IDS
    assert missing_layers(DIFF_IDS, {CHAIN_IDS[0]}) == [B, C]
    assert missing_layers(DIFF_IDS, set(CHAIN_IDS[:2])) == [C]
    assert missing_layers(DIFF_IDS, set(CHAIN_IDS)) == []
    # Having the top layer's diff id on another base does not help: chain ids differ.
    assert missing_layers(DIFF_IDS, {CHAIN_IDS[0], chain_ids([A, C])[1]}) == [B, C]
    # A chain id present above a missing one cannot be, and changes nothing.
    assert missing_layers(DIFF_IDS, {CHAIN_IDS[0], CHAIN_IDS[2]}) == [B, C]


def test_a_layer_repeated_higher_up_is_sent_once():
    image = [A, B, A]
    assert missing_layers(image, {CHAIN_IDS[0]}) == [B, A]
    assert missing_layers(image, set()) == [A, B]


def test_what_a_node_holds_is_the_chain_ids_of_every_prefix_of_every_image():
    assert present_chain_ids([DIFF_IDS, [A]]) == set(CHAIN_IDS)
    assert present_chain_ids([[B]]) == {B}  # B alone is another chain than A, B
    assert present_chain_ids([]) == set()


# A 4-layer image's `docker save` folders (Docker 20.10.24): the json files of the first, second
# and top layers, as saved; the folder names are their v1 ids.
BENCH_DIFF_IDS = [
    "sha256:1ef67a87b12602caf9a8718df2ebd33a3f646af83f733dc4f2b31018b705ecf1",
    "sha256:696d5b66adf9bae833ce02fce82761a6310190f34d353f90b47c989cbf3d4986",
    "sha256:55d8076e78148d2962d4b01868a117fd051f728c2ce6347be48b825d978e6237",
    "sha256:01ec36e932387d8422e87ed160146bd6dfff104362d41afa7017c32708bc6e67",
]
_EMPTY_CONFIG = (
    '{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,'
    '"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":null,'
    '"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null}'
)
FIRST_JSON = (
    '{"id":"49ac852cdd763688813eb8c029fc61da43ab9bae2cbc107264a8e57252010bc8",'
    f'"created":"1970-01-01T00:00:00Z","container_config":{_EMPTY_CONFIG},"os":"linux"}}'
)
SECOND_JSON = (
    '{"id":"d774302e188f616e7a761926651a65b5551fc4cd4fd85c2aee200b4e6bf28590",'
    '"parent":"49ac852cdd763688813eb8c029fc61da43ab9bae2cbc107264a8e57252010bc8",'
    f'"created":"1970-01-01T00:00:00Z","container_config":{_EMPTY_CONFIG},"os":"linux"}}'
)
_PATH = '"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'
_IMAGE = '"Image":"sha256:d81bf40d1c651a614b7cdcfea4b8dd7e8de35bd9e6c07f07a55be99c164b6a73"'
_RUN = (
    '"Cmd":["/bin/sh","-c","#(nop) COPY dir:bc5e2f15af474ff420dad865c6341aa7035b876aeff6ebc6206'
    '2c3b2ff2fdbc5 in /opt/orchestrator/workload/ "]'
)
_HEAD = (
    '"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,'
    '"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,'
)
_TAIL = '"Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null}'
TOP_JSON = (
    '{"id":"f0f6351456a0b8f172cd52e36cb8c968959bd4459c9b7c3bcfe8790078bc148f",'
    '"parent":"3441a7a899911b09c1d0d9f50d4ad41266cd9c8e4f20f6890820639b8f72da22",'
    '"created":"2026-12-05T09:14:36.554751185Z",'
    f'"container_config":{{{_HEAD}{_PATH},{_RUN},{_IMAGE},{_TAIL},'
    '"docker_version":"20.10.24+dfsg1",'
    f'"config":{{{_HEAD}{_PATH},"Cmd":null,{_IMAGE},{_TAIL},'
    '"architecture":"amd64","os":"linux"}'
)


def test_a_legacy_save_folder_is_told_by_its_json_before_its_layer_is_read():
    chains = chain_ids(BENCH_DIFF_IDS)
    shuffled = [chains[2], chains[0], chains[3], chains[1]]
    assert legacy_layer_chain(FIRST_JSON, shuffled) == chains[0]
    assert legacy_layer_chain(SECOND_JSON, shuffled) == chains[1]
    assert legacy_layer_chain(TOP_JSON, shuffled) == chains[3]  # the top keeps "os"


def test_a_folder_that_does_not_hash_to_its_name_is_not_recognised():
    chains = chain_ids(BENCH_DIFF_IDS)
    assert legacy_layer_chain(SECOND_JSON, [chains[0], chains[2], chains[3]]) is None
    assert legacy_layer_chain(SECOND_JSON.replace('"Tty":false', '"Tty":true'), chains) is None
    assert legacy_layer_chain(FIRST_JSON.replace("49ac852c", "49ac852d"), chains) is None
    assert legacy_layer_chain("{}", chains) is None
    assert legacy_layer_chain("not json", chains) is None
    # a stray character where a member should start is not JSON, even with the rest intact
    assert legacy_layer_chain(FIRST_JSON, chains) == chains[0]
    assert legacy_layer_chain(FIRST_JSON.replace("{", "{X", 1), chains) is None
    assert legacy_layer_chain(FIRST_JSON.replace('":', '"X:', 1), chains) is None
