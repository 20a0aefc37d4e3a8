# Glue Data Catalog database + the lake's Delta tables, so Athena (engine v3 reads Delta natively) and
# Spark SQL with the Glue metastore (EMR) can query them by name. The tables are written by the stlake
# jobs (delta-rs commits); the catalog only points at their locations. The column lists mirror
# lib/stlake/schemas.py (tests/test_terraform.py checks that they agree); readers take the
# authoritative schema from each table's _delta_log.

locals {
  # table -> ordered [column, Hive type] pairs (a list, not a map, to keep the column order).
  delta_tables = {
    slides = [
      ["slide_id", "string"],
      ["technology", "string"],
      ["layout", "string"],
      ["species", "string"],
      ["tissue", "string"],
      ["source_uri", "string"],
      ["image_uri", "string"],
      ["image_format", "string"],
      ["image_width", "int"],
      ["image_height", "int"],
      ["image_source", "string"],
      ["coord_scale", "double"],
      ["spot_diameter_px", "double"],
      ["microns_per_pixel", "double"],
      ["tile_size_px", "int"],
      ["tile_resize_px", "int"],
      ["tile_microns_per_pixel", "double"],
      ["pyramid_level", "int"],
      ["scale_source", "string"],
      ["n_spots", "bigint"],
      ["n_spots_dropped", "bigint"],
      ["n_spots_without_expression", "bigint"],
      ["n_genes", "int"],
      ["total_counts", "bigint"],
      ["meta_json", "string"],
      ["run_id", "string"],
      ["ingested_at", "timestamp"],
    ]
    spots = [
      ["slide_id", "string"],
      ["spot_id", "string"],
      ["technology", "string"],
      ["x", "double"],
      ["y", "double"],
      ["in_tissue", "boolean"],
      ["array_row", "int"],
      ["array_col", "int"],
      ["label", "string"],
      ["tile", "binary"],
      ["tile_format", "string"],
      ["tile_width", "int"],
      ["tile_height", "int"],
      ["tile_x0", "int"],
      ["tile_y0", "int"],
      ["tile_size_px", "int"],
      ["padded", "boolean"],
      ["tissue_fraction", "float"],
      ["run_id", "string"],
    ]
    expression = [
      ["slide_id", "string"],
      ["spot_id", "string"],
      ["technology", "string"],
      ["gene_ids", "array<bigint>"],
      ["counts", "array<int>"],
      ["total_counts", "bigint"],
      ["n_genes", "int"],
      ["run_id", "string"],
    ]
    genes = [
      ["gene_id", "bigint"],
      ["species", "string"],
      ["gene_key", "string"],
      ["symbol", "string"],
      ["ensembl_id", "string"],
    ]
    annotations = [
      ["slide_id", "string"],
      ["spot_id", "string"],
      ["set", "string"],
      ["raw_label", "string"],
      ["label", "string"],
      ["source_uri", "string"],
      ["run_id", "string"],
    ]
    rejects = [
      ["run_id", "string"],
      ["slide_id", "string"],
      ["stage", "string"],
      ["severity", "string"],
      ["reason", "string"],
      ["detail", "string"],
      ["source_uri", "string"],
      ["rejected_at", "timestamp"],
    ]
    pairs = [
      ["slide_id", "string"],
      ["spot_id", "string"],
      ["technology", "string"],
      ["species", "string"],
      ["tissue", "string"],
      ["label", "string"],
      ["tissue_fraction", "float"],
      ["tile", "binary"],
      ["tile_format", "string"],
      ["gene_ids", "array<bigint>"],
      ["counts", "array<int>"],
      ["total_counts", "bigint"],
      ["label_sets", "array<string>"],
      ["set_labels", "array<string>"],
    ]
    gene_panels = [
      ["panel", "string"],
      ["rank", "int"],
      ["gene_id", "bigint"],
      ["species", "string"],
      ["symbol", "string"],
      ["score", "double"],
    ]
  }
}

resource "aws_glue_catalog_database" "stlake" {
  name         = var.glue_database_name
  description  = "stlake spatial-transcriptomics lake (Delta Lake tables under ${local.lake_uri})"
  location_uri = "${local.lake_uri}/"
}

resource "aws_glue_catalog_table" "delta" {
  for_each = local.delta_tables

  name          = each.key
  database_name = aws_glue_catalog_database.stlake.name
  description   = "stlake Delta table ${each.key} (docs/tables.md)"
  table_type    = "EXTERNAL_TABLE"

  parameters = {
    EXTERNAL                     = "TRUE"
    table_type                   = "DELTA" # Athena: read as a Delta Lake table
    "spark.sql.sources.provider" = "delta" # Spark SQL: a Delta data source table
    classification               = "delta"
  }

  storage_descriptor {
    location      = "${local.lake_uri}/${each.key}"
    input_format  = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
    output_format = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"

    ser_de_info {
      serialization_library = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
      # Spark resolves a data source table's location from the "path" storage property.
      parameters = {
        path = "${local.lake_uri}/${each.key}"
      }
    }

    dynamic "columns" {
      for_each = each.value
      content {
        name = columns.value[0]
        type = columns.value[1]
      }
    }
  }
}

resource "aws_athena_workgroup" "stlake" {
  name        = var.name_prefix
  description = "Queries over the stlake Delta tables; results SSE-KMS encrypted under ${local.athena_prefix}"
  state       = "ENABLED"

  configuration {
    # Clients cannot override the output location / encryption below.
    enforce_workgroup_configuration    = true
    publish_cloudwatch_metrics_enabled = true
    bytes_scanned_cutoff_per_query     = var.athena_bytes_scanned_cutoff

    # Delta Lake tables need Athena engine version 3.
    engine_version {
      selected_engine_version = "Athena engine version 3"
    }

    result_configuration {
      output_location       = "s3://${aws_s3_bucket.lake.id}/${local.athena_prefix}"
      expected_bucket_owner = local.account_id

      encryption_configuration {
        encryption_option = "SSE_KMS"
        kms_key_arn       = aws_kms_key.lake.arn
      }
    }
  }
}

# Attach to the people / roles that query the lake with Athena (not attached to anything here).
data "aws_iam_policy_document" "athena_query" {
  statement {
    sid       = "UseWorkgroup"
    effect    = "Allow"
    actions   = ["athena:StartQueryExecution", "athena:GetQueryExecution", "athena:GetQueryResults", "athena:StopQueryExecution", "athena:GetWorkGroup"]
    resources = [aws_athena_workgroup.stlake.arn]
  }

  statement {
    sid     = "ReadStlakeCatalog"
    effect  = "Allow"
    actions = ["glue:GetDatabase", "glue:GetTable", "glue:GetTables", "glue:GetPartition", "glue:GetPartitions"]
    resources = [
      local.glue_catalog_arn,
      local.glue_database_arn,
      local.glue_tables_arn,
    ]
  }

  statement {
    sid       = "ListLakeAndResults"
    effect    = "Allow"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [local.lake_bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [local.lake_prefix, "${local.lake_prefix}*", local.athena_prefix, "${local.athena_prefix}*"]
    }
  }

  statement {
    sid       = "ReadLake"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = ["${local.lake_bucket_arn}/${local.lake_prefix}*"]
  }

  statement {
    sid       = "ReadWriteResults"
    effect    = "Allow"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    resources = ["${local.lake_bucket_arn}/${local.athena_prefix}*"]
  }

  statement {
    sid       = "UseLakeKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [aws_kms_key.lake.arn]
  }
}

resource "aws_iam_policy" "athena_query" {
  name        = "${var.name_prefix}-athena-query"
  description = "Query the stlake Delta tables through the ${var.name_prefix} Athena workgroup"
  policy      = data.aws_iam_policy_document.athena_query.json
}
