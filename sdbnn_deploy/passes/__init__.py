"""The converter's passes, in the order convert runs them: each is a function Graph -> Graph.

    trace           torch module -> Graph (binary convs as BinarizePack + WsdConv2d)
    fold_wsd        WsdConv2d -> BinaryConv2d(mode "int") with +-1 weights
    fold_threshold  BinaryConv2d -> [MaxPool] -> BN -> hardtanh -> static-ASD sign  =>  mode "bits"
    fold_float_threshold  float Conv -> BN -> hardtanh -> static-ASD sign  =>  signed Conv -> sign(y + t)
    fold_batchnorm  BinaryConv2d -> BN  =>  mode "affine"
    pack_weights    +-1 weights -> uint64 words (sdbnn_deploy.bits)
"""
