output "lake_bucket" {
  description = "Lake bucket (raw/, lake/, scratch/, artifacts/, athena-results/, emr-logs/)."
  value       = aws_s3_bucket.lake.id
}

output "logs_bucket" {
  description = "Bucket receiving the lake bucket's S3 server access logs."
  value       = aws_s3_bucket.logs.id
}

output "lake_uri" {
  description = "Lake root to pass as --lake to the stlake jobs."
  value       = local.lake_uri
}

output "raw_uri" {
  description = "Where raw slides are uploaded (--source of the ingest job)."
  value       = "s3://${aws_s3_bucket.lake.id}/${trimsuffix(local.raw_prefix, "/")}"
}

output "artifacts_uri" {
  description = "Prefix of the job scripts (jobs/) and the Python environment archive (envs/)."
  value       = "s3://${aws_s3_bucket.lake.id}/${trimsuffix(local.artifacts_prefix, "/")}"
}

output "emr_logs_uri" {
  description = "logUri for the EMR Serverless jobs' S3 monitoring configuration."
  value       = "s3://${aws_s3_bucket.lake.id}/${trimsuffix(local.emr_logs_prefix, "/")}"
}

output "kms_key_arn" {
  description = "KMS key encrypting the lake bucket, job logs, Athena results and the training volume."
  value       = aws_kms_key.lake.arn
}

output "emr_application_id" {
  description = "EMR Serverless application id (--application-id of start-job-run)."
  value       = aws_emrserverless_application.spark.id
}

output "emr_job_role_arn" {
  description = "EMR Serverless job execution role (--execution-role-arn of start-job-run)."
  value       = aws_iam_role.emr_job.arn
}

output "training_role_arn" {
  description = "Role of the GPU training node (read-only on lake/)."
  value       = aws_iam_role.training.arn
}

output "training_instance_profile" {
  description = "Instance profile of the GPU training node."
  value       = aws_iam_instance_profile.training.name
}

output "training_launch_template_id" {
  description = "Launch template of the GPU training node."
  value       = aws_launch_template.training.id
}

output "glue_database" {
  description = "Glue Data Catalog database of the Delta tables."
  value       = aws_glue_catalog_database.stlake.name
}

output "glue_tables" {
  description = "Delta tables registered in the Glue database."
  value       = sort(keys(aws_glue_catalog_table.delta))
}

output "athena_workgroup" {
  description = "Athena workgroup (--work-group) with enforced, SSE-KMS encrypted results."
  value       = aws_athena_workgroup.stlake.name
}

output "athena_query_policy_arn" {
  description = "Managed policy to attach to principals that query the lake through Athena."
  value       = aws_iam_policy.athena_query.arn
}
