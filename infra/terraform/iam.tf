# Two roles, both least-privilege and with no "*" action anywhere:
#   emr_job:  EMR Serverless job runtime (execution) role of the ingest / build_pairs jobs.
#   training: instance role of the GPU training node; read-only on lake/.
#
# No statement here uses Resource = "*": S3 statements name the bucket or a prefix, KMS statements the
# key ARN, Glue statements the catalog, the stlake database and its tables. (The only "*" resources of
# the stack are in the KMS key policy, where AWS requires "*" to mean "this key"; see kms.tf.)

locals {
  glue_catalog_arn  = "arn:${local.partition}:glue:${var.region}:${local.account_id}:catalog"
  glue_database_arn = "arn:${local.partition}:glue:${var.region}:${local.account_id}:database/${var.glue_database_name}"
  glue_tables_arn   = "arn:${local.partition}:glue:${var.region}:${local.account_id}:table/${var.glue_database_name}/*"
  # Hive-compatible clients (Spark's Glue metastore client on EMR) look the "default" database up
  # when a session starts; only glue:GetDatabase on it is granted, nothing on its tables.
  glue_default_database_arn = "arn:${local.partition}:glue:${var.region}:${local.account_id}:database/default"
}

# ------------------------------------------------------------------------------------------------
# EMR Serverless job execution role
# ------------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "emr_job_trust" {
  statement {
    sid     = "EmrServerlessAssumeRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["emr-serverless.amazonaws.com"]
    }
    # Confused-deputy protection: only applications of this account in this region.
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:emr-serverless:${var.region}:${local.account_id}:/applications/*"]
    }
  }
}

resource "aws_iam_role" "emr_job" {
  name                 = "${var.name_prefix}-emr-job"
  description          = "EMR Serverless job runtime role of the stlake Spark jobs"
  assume_role_policy   = data.aws_iam_policy_document.emr_job_trust.json
  max_session_duration = 3600
}

data "aws_iam_policy_document" "emr_job" {
  # Listing, restricted to the prefixes the job works in.
  statement {
    sid       = "ListJobPrefixes"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.lake_bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values = flatten([
        for p in [local.raw_prefix, local.lake_prefix, local.scratch_prefix, local.artifacts_prefix] :
        [p, "${p}*"]
      ])
    }
  }

  statement {
    sid       = "BucketLocation"
    effect    = "Allow"
    actions   = ["s3:GetBucketLocation"]
    resources = [local.lake_bucket_arn]
  }

  # Inputs: raw slides and the job's code / Python environment archive.
  statement {
    sid     = "ReadRawAndArtifacts"
    effect  = "Allow"
    actions = ["s3:GetObject"]
    resources = [
      "${local.lake_bucket_arn}/${local.raw_prefix}*",
      "${local.lake_bucket_arn}/${local.artifacts_prefix}*",
    ]
  }

  # Delta tables (Parquet data files written by executors, _delta_log commits by the driver) and
  # scratch space. DeleteObject: re-ingest replaces files, VACUUM removes unreferenced ones.
  statement {
    sid     = "ReadWriteLakeAndScratch"
    effect  = "Allow"
    actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    resources = [
      "${local.lake_bucket_arn}/${local.lake_prefix}*",
      "${local.lake_bucket_arn}/${local.scratch_prefix}*",
    ]
  }

  # Driver / executor logs (configurationOverrides.monitoringConfiguration.s3MonitoringConfiguration).
  statement {
    sid       = "WriteJobLogs"
    effect    = "Allow"
    actions   = ["s3:PutObject"]
    resources = ["${local.lake_bucket_arn}/${local.emr_logs_prefix}*"]
  }

  # SSE-KMS objects: read (Decrypt) and write (GenerateDataKey / Encrypt) with the lake key only.
  statement {
    sid       = "UseLakeKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = [aws_kms_key.lake.arn]
  }

  # Glue Data Catalog: read-only on the stlake database and its tables (Terraform owns the table
  # definitions; Delta commits go to S3, not to Glue).
  statement {
    sid     = "ReadStlakeCatalog"
    effect  = "Allow"
    actions = ["glue:GetDatabase", "glue:GetTable", "glue:GetTables", "glue:GetPartition", "glue:GetPartitions", "glue:BatchGetPartition"]
    resources = [
      local.glue_catalog_arn,
      local.glue_database_arn,
      local.glue_tables_arn,
    ]
  }

  statement {
    sid       = "LookUpDefaultDatabase"
    effect    = "Allow"
    actions   = ["glue:GetDatabase"]
    resources = [local.glue_catalog_arn, local.glue_default_database_arn]
  }
}

resource "aws_iam_role_policy" "emr_job" {
  name   = "stlake-job"
  role   = aws_iam_role.emr_job.id
  policy = data.aws_iam_policy_document.emr_job.json
}

# ------------------------------------------------------------------------------------------------
# GPU training node role: read lake/ only
# ------------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "training_trust" {
  statement {
    sid     = "Ec2AssumeRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "training" {
  name                 = "${var.name_prefix}-training"
  description          = "GPU training node: reads the stlake Delta tables under lake/"
  assume_role_policy   = data.aws_iam_policy_document.training_trust.json
  max_session_duration = 3600
}

data "aws_iam_policy_document" "training" {
  statement {
    sid       = "ListLake"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.lake_bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [local.lake_prefix, "${local.lake_prefix}*"]
    }
  }

  statement {
    sid       = "ReadLake"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = ["${local.lake_bucket_arn}/${local.lake_prefix}*"]
  }

  statement {
    sid       = "DecryptWithLakeKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:DescribeKey"]
    resources = [aws_kms_key.lake.arn]
  }
}

resource "aws_iam_role_policy" "training" {
  name   = "stlake-read-lake"
  role   = aws_iam_role.training.id
  policy = data.aws_iam_policy_document.training.json
}

resource "aws_iam_instance_profile" "training" {
  name = "${var.name_prefix}-training"
  role = aws_iam_role.training.name
}
