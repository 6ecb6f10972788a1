"""Inside the converter's process (``gguf_tool.launch --merge-*``): llama.cpp's converter reads the
merged model's tensors from ``upload_common.merge_stream`` instead of safetensors files, so a merge
whose weights were deferred (merge-tool --defer-weights) is converted without ever being written.

The converter lists a model's tensors in ``ModelBase.index_tensors`` as name -> a function giving a
lazy tensor (its dtype and shape known, its data read when the GGUF writer reaches it). The hook lists
the recipe's tensors in the order the converter would meet them in the written folder, each a lazy
tensor whose data is the merged tensor computed then: memory stays at a tensor or two, as when reading
files. Subclasses that override ``index_tensors`` call this one through ``super()``."""

from __future__ import annotations

from pathlib import Path


def hook_converter(recipe_dir: Path, base_dir: Path, adapter_dir: Path) -> None:
    """Make the converter (its ``conversion`` package on sys.path) read the merge of ``adapter_dir``
    into ``base_dir`` by the recipe saved in ``recipe_dir``."""
    from conversion.base import LazyTorchTensor, ModelBase

    from upload_common.merge_stream import MergedTensors, MergeRecipe

    merged = MergedTensors.from_folders(MergeRecipe.read(recipe_dir), base_dir, adapter_dir)
    specs = merged.recipe.out_specs

    def generator(name: str, lazy: bool):
        if not lazy:
            return lambda: merged.tensor(name)
        dtype = LazyTorchTensor._dtype_str_map[specs[name]["dtype"]]
        meta = LazyTorchTensor.meta_with_dtype_and_shape(dtype, tuple(specs[name]["shape"]))
        return lambda: LazyTorchTensor(meta=meta, args=(name,), func=merged.tensor)

    def index_tensors(self, remote_hf_model_id: str | None = None) -> dict:
        tensors = {}
        for name in merged.recipe.order():
            if item := self.filter_tensors((name, generator(name, self.lazy))):
                tensors[item[0]] = item[1]
        return tensors

    ModelBase.index_tensors = index_tensors
