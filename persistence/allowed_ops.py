"""The op types an untrusted graph may contain: everything else is refused (default deny).

TensorFlow registers well over a thousand ops and keeps adding ones that open files, sockets or
run code (dataset sources that take a serialized graph, debug dumpers, calibration savers, RPC
clients...). A list of the dangerous ones is always one release behind, so the check is the
other way round: a graph may only use ops that compute on tensors in memory.

How the list was made: the op types of every graph our own recipes (``persistence/recipes``) and
the test checkpoint builders write (training included: gradients, optimizers, initialisers), then
the ops a TF1 inference graph of a common model uses (dense, convolutional, recurrent via
``tf.while_loop``/``tf.function``, text models with hash tables). Each group says why it is safe.
What is deliberately absent although harmless-looking: every ``*Dataset*`` op (several take a
serialized graph or a file name), image/audio decoders (they parse untrusted bytes in C++),
``DecodeProto``/``EncodeProto`` (their descriptor source may be a file), ``ImmutableConst`` (maps
a file), table initialisers from text files, summary writers, ``Debug*``, ``PyFunc*``,
``RemoteCall`` and ``SymbolicGradient`` (they call a function by an arbitrary name). A trusted run
may use them all.

The saver's own ops (:data:`SAVER_OPS`) are not here: they are allowed only where the graph's
``saver_def`` puts them, which :mod:`persistence.graphsafety` checks node by node.
"""

from __future__ import annotations

# Graph plumbing: inputs, constants, identities, grouping.
_PLUMBING = {
    "Const", "Placeholder", "PlaceholderWithDefault", "PlaceholderV2", "Identity", "IdentityN",
    "NoOp", "StopGradient", "PreventGradient", "Snapshot", "EnsureShape", "CheckNumerics",
    "CheckNumericsV2", "Assert",
    # Printing goes to stderr / the log; PrintV2's output_stream is checked for "file://".
    "Print", "PrintV2", "StringFormat",
}

# TF1 summaries only serialize a Summary proto in memory (a Python FileWriter writes it, never the
# graph); the summary *writer* ops, which open event files or databases, are not here.
_SUMMARIES = {
    "ScalarSummary", "HistogramSummary", "TensorSummary", "TensorSummaryV2", "MergeSummary",
    "ImageSummary", "AudioSummaryV2",
}

# Variables (TF1 ref variables and resource variables), their initialisation and training updates:
# they only touch the session's own variable store.
_VARIABLES = {
    "Variable", "VariableV2", "VarHandleOp", "ReadVariableOp", "VarIsInitializedOp",
    "IsVariableInitialized", "DestroyResourceOp", "Assign", "AssignAdd", "AssignSub",
    "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "ResourceGather",
    "ResourceGatherNd", "ScatterUpdate", "ScatterAdd", "ScatterSub", "ScatterNdUpdate",
    "ResourceScatterUpdate", "ResourceScatterAdd", "ResourceScatterSub",
    "ResourceScatterNdUpdate", "VariableShape",
    # Optimizers (train ops sit in every training graph, although inference never runs them).
    "ApplyGradientDescent", "ResourceApplyGradientDescent", "ApplyMomentum", "ResourceApplyMomentum",
    "ApplyAdam", "ResourceApplyAdam", "ApplyAdagrad", "ResourceApplyAdagrad", "ResourceApplyAdagradV2",
    "ApplyRMSProp", "ResourceApplyRMSProp", "ApplyFtrl", "ResourceApplyFtrl", "ApplyFtrlV2",
    "ResourceApplyFtrlV2", "ApplyAdadelta", "ResourceApplyAdadelta", "ResourceApplyKerasMomentum",
    "SparseApplyAdagrad", "ResourceSparseApplyAdagrad", "ResourceSparseApplyAdagradV2",
    "SparseApplyMomentum", "ResourceSparseApplyMomentum", "SparseApplyFtrl", "ResourceSparseApplyFtrl",
    "ResourceSparseApplyKerasMomentum",
}

# Random numbers for initialisers and dropout.
_RANDOM = {
    "RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal",
    "RandomShuffle", "Multinomial", "StatelessRandomUniform", "StatelessRandomUniformV2",
    "StatelessRandomNormal", "StatelessRandomNormalV2", "StatelessTruncatedNormal",
    "StatelessTruncatedNormalV2", "StatelessRandomUniformInt", "StatelessRandomUniformIntV2",
    "StatelessRandomGetKeyCounter", "StatelessRandomGetKeyCounterAlg", "StatelessRandomGetAlg",
}

# Element-wise and reduction math, comparisons, logic.
_MATH = {
    "Add", "AddV2", "AddN", "Sub", "Mul", "MulNoNan", "Div", "DivNoNan", "RealDiv", "FloorDiv",
    "TruncateDiv", "FloorMod", "Mod", "TruncateMod", "Maximum", "Minimum", "Neg", "Abs", "Sign",
    "Square", "SquaredDifference", "Sqrt", "Rsqrt", "Exp", "Expm1", "Log", "Log1p", "Pow",
    "Reciprocal", "Inv", "Floor", "Ceil", "Round", "Rint", "Sin", "Cos", "Tan", "Asin", "Acos",
    "Atan", "Atan2", "Sinh", "Cosh", "Tanh", "Asinh", "Acosh", "Atanh", "Sigmoid", "Erf", "Erfc",
    "Lgamma", "Digamma", "Xlogy", "Xdivy", "ClipByValue", "IsNan", "IsInf", "IsFinite",
    "Equal", "NotEqual", "Less", "LessEqual", "Greater", "GreaterEqual", "ApproximateEqual",
    "LogicalAnd", "LogicalOr", "LogicalNot", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Invert",
    "LeftShift", "RightShift", "Sum", "Mean", "Prod", "Max", "Min", "All", "Any", "ArgMax", "ArgMin",
    "Cumsum", "Cumprod", "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum",
    "SparseMatMul", "Cross", "Cast", "Bitcast", "Complex", "Real", "Imag", "ComplexAbs",
    "SegmentSum", "SegmentMean", "SegmentMax", "SegmentMin", "SegmentProd", "UnsortedSegmentSum",
    "UnsortedSegmentMax", "UnsortedSegmentMin", "UnsortedSegmentProd", "SparseSegmentSum",
    "SparseSegmentMean", "SparseSegmentSqrtN", "MatrixDiag", "MatrixDiagV3", "MatrixDiagPart",
    "MatrixDiagPartV3", "MatrixSetDiag", "MatrixSetDiagV3", "MatrixBandPart", "MatrixInverse",
    "MatrixDeterminant", "Cholesky", "Qr", "Svd", "SelfAdjointEigV2", "MatrixTriangularSolve",
    "MatrixSolve", "Bucketize",
}

# Neural-network layers, losses and their gradients.
_NN = {
    "Relu", "Relu6", "Elu", "Selu", "LeakyRelu", "Softplus", "Softsign", "Softmax", "LogSoftmax",
    "BiasAdd", "BiasAddV1", "Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv2DBackpropInput",
    "Conv2DBackpropFilter", "Conv3DBackpropInputV2", "Conv3DBackpropFilterV2",
    "DepthwiseConv2dNativeBackpropInput", "DepthwiseConv2dNativeBackpropFilter", "MaxPool",
    "MaxPoolV2", "MaxPool3D", "AvgPool", "AvgPool3D", "MaxPoolGrad", "MaxPoolGradV2", "AvgPoolGrad",
    "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "FusedBatchNormGrad",
    "FusedBatchNormGradV2", "FusedBatchNormGradV3", "LRN", "LRNGrad", "L2Loss",
    "SoftmaxCrossEntropyWithLogits", "SparseSoftmaxCrossEntropyWithLogits", "InTopK", "InTopKV2",
    "TopK", "TopKV2", "Dilation2D", "ResizeBilinear", "ResizeNearestNeighbor", "ResizeBicubic",
    "ResizeBilinearGrad", "ResizeNearestNeighborGrad",
    "ReluGrad", "Relu6Grad", "EluGrad", "SeluGrad", "LeakyReluGrad", "SoftplusGrad", "SoftsignGrad",
    "SigmoidGrad", "TanhGrad", "SqrtGrad", "RsqrtGrad", "ReciprocalGrad", "InvGrad", "BiasAddGrad",
    "BroadcastGradientArgs",
}

# Shapes, slicing, gathering, reshaping.
_ARRAY = {
    "Shape", "ShapeN", "Size", "Rank", "Reshape", "Squeeze", "ExpandDims", "Transpose",
    "ConjugateTranspose", "Concat", "ConcatV2", "ConcatOffset", "Split", "SplitV", "Slice",
    "StridedSlice", "StridedSliceGrad", "Pack", "Unpack", "Tile", "TileGrad", "Pad", "PadV2",
    "MirrorPad", "MirrorPadGrad", "Fill", "ZerosLike", "OnesLike", "Range", "LinSpace", "Gather",
    "GatherV2", "GatherNd", "ScatterNd", "TensorScatterUpdate", "TensorScatterAdd", "OneHot",
    "Reverse", "ReverseV2", "ReverseSequence", "BroadcastTo", "BroadcastArgs", "Where", "Select",
    "SelectV2", "Unique", "UniqueV2", "UniqueWithCounts", "InvertPermutation", "DynamicStitch",
    "ParallelDynamicStitch", "DynamicPartition", "SparseToDense", "SpaceToBatchND",
    "BatchToSpaceND", "SpaceToDepth", "DepthToSpace", "ListDiff", "SetSize", "DenseToDenseSetOperation",
    "SparseReshape", "SparseTensorDenseMatMul", "SparseFillEmptyRows", "SparseSlice", "SparseConcat",
    "SparseReorder", "SparseAdd", "SparseReduceSum", "SparseSegmentSumWithNumSegments",
    "Empty", "DeepCopy", "InplaceUpdate", "InplaceAdd", "Roll", "Diag", "DiagPart",
    # Ragged tensors, as tf.strings.split makes them, and counting.
    "RaggedTensorToTensor", "RaggedTensorToSparse", "RaggedRange", "RaggedGather", "DenseBincount",
    "Bincount",
}

# Strings and lookup tables (text models tokenise and map words to ids inside the graph). Tables
# initialised from a file are not here.
_TEXT = {
    "StringJoin", "ReduceJoin", "StringSplit", "StringSplitV2", "StringStrip", "StringLower",
    "StringUpper", "StringLength", "Substr", "AsString", "StringToNumber", "StringToHashBucket",
    "StringToHashBucketFast", "StringToHashBucketStrong", "RegexReplace", "StaticRegexReplace",
    "RegexFullMatch", "StaticRegexFullMatch", "UnicodeDecode", "UnicodeEncode", "UnicodeTranscode",
    "UnicodeScript", "StringNGrams", "Fingerprint",
    "HashTable", "HashTableV2", "MutableHashTable", "MutableHashTableV2", "MutableDenseHashTableV2",
    "InitializeTable", "InitializeTableV2", "LookupTableFind", "LookupTableFindV2",
    "LookupTableInsertV2", "LookupTableSizeV2", "LookupTableImportV2", "LookupTableExportV2",
    "LookupTableRemoveV2",
}

# Control flow. V1 loops/conditionals are plain nodes; the functional forms (If/While/Case and
# function calls) name functions of the graph's own library, and every one of those is checked
# with this same list; a function name that is not in the library is refused.
_CONTROL_FLOW = {
    "Switch", "RefSwitch", "Merge", "RefMerge", "Enter", "RefEnter", "Exit", "RefExit",
    "NextIteration", "RefNextIteration", "LoopCond", "ControlTrigger", "Identity",
    "If", "StatelessIf", "While", "StatelessWhile", "Case", "StatelessCase",
    "PartitionedCall", "StatefulPartitionedCall",
    "TensorArrayV3", "TensorArrayReadV3", "TensorArrayWriteV3", "TensorArrayGatherV3",
    "TensorArrayScatterV3", "TensorArrayConcatV3", "TensorArraySplitV3", "TensorArraySizeV3",
    "TensorArrayGradV3", "TensorArrayCloseV3",
    "EmptyTensorList", "TensorListReserve", "TensorListFromTensor", "TensorListStack",
    "TensorListGetItem", "TensorListSetItem", "TensorListPushBack", "TensorListPopBack",
    "TensorListLength", "TensorListElementShape", "TensorListConcatV2", "TensorListGather",
    "TensorListScatterIntoExistingList", "TensorListResize",
}

ALLOWED_OPS: frozenset[str] = frozenset(
    _PLUMBING | _SUMMARIES | _VARIABLES | _RANDOM | _MATH | _NN | _ARRAY | _TEXT | _CONTROL_FLOW
)

# A TF1 ``Saver`` builds these under its own name scope: they read (restore) and write (save)
# checkpoint files at the path fed to the saver's filename tensor. The check allows the readers
# only on the saver's restore path, reading that filename tensor, and the writers only on its
# save path, which nothing we run depends on.
SAVER_READ_OPS: frozenset[str] = frozenset({"RestoreV2", "Restore", "RestoreSlice"})
SAVER_WRITE_OPS: frozenset[str] = frozenset({"SaveV2", "Save", "SaveSlices", "MergeV2Checkpoints"})
# Name computations of a sharded save: harmless strings, but nothing outside a saver needs them.
SAVER_NAME_OPS: frozenset[str] = frozenset({"ShardedFilename", "ShardedFilespec"})
SAVER_OPS: frozenset[str] = SAVER_READ_OPS | SAVER_WRITE_OPS | SAVER_NAME_OPS
